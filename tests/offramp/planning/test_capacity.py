"""The capacity planner on synthetic run summaries, checked against hand arithmetic."""

import itertools
import json
import math

import pytest

from offramp.planning.capacity import plan_capacity, projection_lines, stage_utilization, survival_by_layer
from offramp.config import ConfigError
from tests.conftest import make_summary, stage


def actors(plan):
    return [p.actors for p in plan.stages]


def test_target_needs_ceil_of_rate_times_survival_over_per_actor_rate():
    # 720000 docs/h = 200 docs/s; stage 0: 200 * 1.0 / 100 = 2 actors; stage 1: 200 * 0.4 / 25 = 3.2 -> 4.
    plan = plan_capacity(make_summary(), target_docs_per_hour=720_000, headroom=1.0)
    assert actors(plan) == [2, 4]
    s0, s1 = plan.stages
    assert (s0.survival_in, s1.survival_in) == (1.0, 0.4)
    assert (s0.docs_per_actor_second, s1.docs_per_actor_second) == (100.0, 25.0)
    assert s0.utilization == pytest.approx(1.0) and s1.utilization == pytest.approx(0.8)  # 80 of 100 docs/s
    assert plan.bottleneck_stage == 0
    assert (plan.gpus, plan.cpus) == (3.0, 6.0)  # 6 actors x 0.5 GPU, x 1 CPU
    assert plan.docs_per_hour == pytest.approx(720_000)
    # a million docs take 1e6 / 720000 h = 1.389 h on 3 GPUs and 6 CPUs
    assert plan.gpu_hours_per_million_docs == pytest.approx(3 * 1e6 / 720_000)  # 4.167
    assert plan.cpu_hours_per_million_docs == pytest.approx(6 * 1e6 / 720_000)  # 8.333
    # stage 0: 2 actors x 100 = 200 docs/s; stage 1: 4 x 25 / 0.4 = 250 -> 200 docs/s sustained
    assert plan.sustainable_docs_per_hour == pytest.approx(720_000)


def test_headroom_adds_actors_and_moves_the_bottleneck():
    # headroom 1.25: stage 0 needs 200 * 1.25 / 100 = 2.5 -> 3; stage 1 200 * 0.4 * 1.25 / 25 = 4 exactly
    plan = plan_capacity(make_summary(), target_docs_per_hour=720_000)
    assert actors(plan) == [3, 4]
    assert plan.stages[0].utilization == pytest.approx(200 / 300)
    assert plan.stages[1].utilization == pytest.approx(0.8) and plan.bottleneck_stage == 1
    # sustained with headroom: min(3 * 100, 4 * 25 / 0.4) / 1.25 = 200 docs/s
    assert plan.sustainable_docs_per_hour == pytest.approx(720_000)
    assert any("1.25x" in a for a in plan.assumptions)


def test_an_exact_actor_count_is_not_rounded_up_by_float_error():
    # stage 1: 114 of 1000 rows in 30 s -> 3.8 docs/s per actor; 100 docs/s * 0.114 / 3.8 = 3 exactly,
    # which float arithmetic gives as 3.0000000000000004.
    summary = make_summary([stage(0, 0, 3, 1000, 10.0), stage(1, 3, 6, 114, 30.0)])
    assert math.ceil(100 * (114 / 1000) / (114 / 30.0)) == 4  # the naive computation
    plan = plan_capacity(summary, target_docs_per_hour=360_000, headroom=1.0)
    assert actors(plan) == [1, 3]
    assert plan.stages[1].utilization == pytest.approx(1.0)


def test_gpu_budget_buys_the_most_throughput_whole_actors_sustain():
    summary = make_summary()
    # 3 GPUs = 6 half-GPU actors: (2, 4) sustains min(200, 250) = 200 docs/s; (3, 3) only min(300, 187.5)
    plan = plan_capacity(summary, budget_gpus=3, headroom=1.0)
    assert actors(plan) == [2, 4] and plan.gpus == 3.0
    assert plan.docs_per_hour == pytest.approx(720_000)
    assert plan.gpu_hours_per_million_docs == pytest.approx(3 * 1e6 / 720_000)
    # 3.4 GPUs still buy only 6 whole actors
    assert actors(plan_capacity(summary, budget_gpus=3.4, headroom=1.0)) == [2, 4]
    # 4 GPUs: the continuous optimum 4 / (0.5 * (1/100 + 0.4/25)) = 307.7 docs/s is out of reach with whole
    # actors; (3, 5) sustains min(300, 312.5) = 300 docs/s = 1.08M docs/h
    plan = plan_capacity(summary, budget_gpus=4, headroom=1.0)
    assert actors(plan) == [3, 5] and plan.gpus == 4.0
    assert plan.docs_per_hour == pytest.approx(1_080_000)
    assert plan.gpu_hours_per_million_docs == pytest.approx(4 * 1e6 / 1_080_000)  # 3.70
    assert plan.stages[0].utilization == pytest.approx(1.0)  # the bottleneck runs flat out at headroom 1


def test_budget_plan_is_the_best_whole_actor_split():
    """Against brute force over every actor split that fits, for several budgets and a headroom."""
    stages = [
        stage(0, 0, 2, 900, 7.0, num_gpus=0.25),
        stage(1, 2, 4, 500, 9.0, num_gpus=0.5),
        stage(2, 4, 6, 200, 5.0, num_gpus=1.0),
    ]
    summary = make_summary(stages)
    cost = [st["busy_seconds"] / 900 for st in stages]  # actor-seconds per input document
    for budget in (1.75, 2.0, 3.0, 4.5, 6.25):
        best = 0.0
        for split in itertools.product(range(1, 20), repeat=3):
            if sum(a * st["num_gpus"] for a, st in zip(split, stages)) <= budget:
                best = max(best, min(a / (c * 1.25) for a, c in zip(split, cost)))
        plan = plan_capacity(summary, budget_gpus=budget)
        assert plan.gpus <= budget
        assert plan.docs_per_hour == pytest.approx(best * 3600), budget


def test_cpu_budget_on_a_cpu_run():
    summary = make_summary([stage(0, 0, 3, 1000, 10.0, num_cpus=2), stage(1, 3, 6, 400, 16.0, num_cpus=2)])
    plan = plan_capacity(summary, budget_cpus=12, headroom=1.0)  # 6 two-CPU actors -> (2, 4) as above
    assert actors(plan) == [2, 4] and plan.cpus == 12 and plan.gpus == 0
    assert plan.cpu_hours_per_million_docs == pytest.approx(12 * 1e6 / 720_000)
    assert plan.gpu_hours_per_million_docs == 0


def test_gpu_budget_on_a_cpu_only_run_says_how_to_plan_instead():
    summary = make_summary([stage(0, 0, 3, 1000, 10.0), stage(1, 3, 6, 400, 16.0)])
    with pytest.raises(ConfigError, match="no GPUs") as e:
        plan_capacity(summary, budget_gpus=4)
    assert "--budget-cpus" in str(e.value) and "conf/tag_gpu_cluster.yaml" in str(e.value)


def test_budget_below_one_actor_per_stage_names_the_minimum():
    with pytest.raises(ConfigError, match=r"needs 1 GPUs; pass --budget-gpus 1 or more"):
        plan_capacity(make_summary(), budget_gpus=0.9)
    with pytest.raises(ConfigError, match=r"needs 2 CPUs"):
        plan_capacity(make_summary(), budget_cpus=1.5)


def test_a_stage_no_row_reached_keeps_one_actor_with_a_note():
    stages = [stage(0, 0, 3, 1000, 10.0), stage(1, 3, 5, 400, 16.0), stage(2, 5, 6, 0, 0.0)]
    plan = plan_capacity(make_summary(stages), target_docs_per_hour=720_000, headroom=1.0)
    assert actors(plan) == [2, 4, 1]
    last = plan.stages[2]
    assert last.utilization == 0 and last.docs_per_actor_second is None and "no row reached" in last.note


def test_missing_stage_timings_are_an_error_with_the_fix():
    for busy in (None, 0.0):
        summary = make_summary([stage(0, 0, 3, 1000, 10.0), stage(1, 3, 6, 400, busy)])
        with pytest.raises(ConfigError, match="did not record stage timings"):
            plan_capacity(summary, target_docs_per_hour=1000)
    with pytest.raises(ConfigError, match="no 'stages'"):
        plan_capacity({"metrics": {}, "exit_histogram": {}}, target_docs_per_hour=1000)


def test_exactly_one_goal_and_a_sane_headroom():
    with pytest.raises(ConfigError, match="exactly one"):
        plan_capacity(make_summary())
    with pytest.raises(ConfigError, match="exactly one"):
        plan_capacity(make_summary(), target_docs_per_hour=1000, budget_gpus=2)
    with pytest.raises(ConfigError, match="headroom"):
        plan_capacity(make_summary(), target_docs_per_hour=1000, headroom=0.5)


def test_plan_states_its_assumptions_and_serializes():
    plan = plan_capacity(make_summary(run_id="run42"), target_docs_per_hour=720_000)
    text = " ".join(plan.assumptions)
    for words in ("run42", "linearly", "headroom", "Start-up time", "Reading, tokenizing and writing",
                  "batch size", "100.0 docs/s per actor", "25.0 docs/s per actor"):  # fmt: skip
        assert words in text, words
    d = json.loads(json.dumps(plan.to_dict()))
    assert [s["actors"] for s in d["stages"]] == [3, 4] and d["mode"] == "target"
    assert d["based_on"]["run_id"] == "run42"
    timed = make_summary()
    timed["metrics"]["startup_seconds"] = 4.0
    text = " ".join(plan_capacity(timed, target_docs_per_hour=720_000).assumptions)
    assert "it took 4.0 s of the 20.0 s wall before the first batch reached the model." in text
    timed["metrics"].update(startup_actor_process_seconds=2.5, startup_model_load_seconds=0.5,
                            startup_input_wait_seconds=1.0)
    text = " ".join(plan_capacity(timed, target_docs_per_hour=720_000).assumptions)
    assert ("4.0 s of the 20.0 s wall before the first batch reached the model: 2.5 s to start the stage actor's "
            "process (its imports), 0.5 s to load its model, 1.0 s waiting for the first rows.") in text


def test_survival_and_measured_utilization_helpers():
    summary = make_summary()  # 1000 labeled: 500 exit at 1, 60 at 2, 40 at 3, 100 at 4 and 5, 200 at 6
    assert survival_by_layer(summary) == pytest.approx([0.5, 0.44, 0.4, 0.3, 0.2, 0.0])
    # busy 10 s and 16 s over 20 s of wall time, one actor each
    assert stage_utilization(summary) == pytest.approx([0.5, 0.8])
    summary["stages"][1]["max_actors"] = 4
    assert stage_utilization(summary)[1] == pytest.approx(0.2)


def test_an_actor_costs_its_torch_threads_when_they_exceed_its_reservation():
    """A local run's actor reserves 1 logical CPU but computes on the threads it was given."""
    cpu_run = make_summary(stages=[stage(0, 0, 6, 1000, 10.0, num_cpus=1.0, torch_threads=2)])
    plan = plan_capacity(cpu_run, target_docs_per_hour=720_000, headroom=1.0)  # 200 docs/s at 100 per actor
    assert [s.actors for s in plan.stages] == [2] and plan.cpus == 4
    assert plan.cpu_hours_per_million_docs == pytest.approx(4 * 1e6 / 720_000)
    assert plan_capacity(cpu_run, budget_cpus=8, headroom=1.0).stages[0].actors == 4


def test_a_rebatching_run_is_planned_as_one_pool_holding_every_stage():
    """Stage 0 took 10 s and stage 1 16 s in the same actors (1 GPU each): 1000 docs per 26
    actor-seconds. 200 docs/s needs ceil(200 * 26 / 1000) = 6 such actors, 6 GPUs."""
    summary = make_summary(stages=[stage(0, 0, 3, 1000, 10.0, num_gpus=1.0), stage(1, 3, 6, 400, 16.0, num_gpus=1.0)])
    summary["run"]["rebatch"] = 8
    plan = plan_capacity(summary, target_docs_per_hour=720_000, headroom=1.0)
    (pool,) = plan.stages
    assert (pool.start, pool.end, pool.actors, plan.gpus) == (0, 6, 6, 6.0)
    assert pool.docs_per_actor_second == pytest.approx(1000 / 26)
    assert "One actor pool held all 2 stages" in " ".join(plan.assumptions)
    summary["run"]["rebatch"] = 0  # the same figures from a pool per stage: 2 + 4 actors
    assert [s.actors for s in plan_capacity(summary, target_docs_per_hour=720_000, headroom=1.0).stages] == [2, 4]


def test_a_cpu_run_with_a_pool_per_stage_is_advised_the_rebatching_layout():
    cpu = make_summary(stages=[stage(0, 0, 3, 1000, 10.0), stage(1, 3, 6, 400, 16.0)])
    plan = plan_capacity(cpu, target_docs_per_hour=720_000)
    assert len(plan.layout_advice) == 1 and "rebatch: 8" in plan.layout_advice[0]
    assert plan.layout_advice[0] in projection_lines(plan)  # shown in the report and the CLI
    cpu["run"]["rebatch"] = 8  # the run used it: nothing to advise
    assert plan_capacity(cpu, target_docs_per_hour=720_000).layout_advice == []


def test_gpu_layouts_are_advised_from_the_h200_measurement():
    """A pool per stage on GPUs measured slowest on the H200, and two actors sharing a GPU
    fastest where the GPU bound the run: a run with either layout to gain is told so; one already
    sharing its GPU is not; one whose whole-GPU actor waited for its input is told to keep it."""
    (advice,) = plan_capacity(make_summary(), target_docs_per_hour=720_000).layout_advice  # 2 pools x 0.5 GPU
    assert "pool per stage on GPUs" in advice and "num_gpus 0.5" in advice and "rebatch: 8" in advice
    assert "0.94x" in advice and "1.10-1.32x" in advice  # the measured figures, not a guess
    whole = make_summary(stages=[stage(0, 0, 6, 1000, 10.0, num_gpus=1.0)])
    (advice,) = plan_capacity(whole, target_docs_per_hour=720_000).layout_advice
    assert "num_gpus 0.5 made 1.10-1.32x" in advice and "twice the actors" in advice
    whole["metrics"]["stage0_active_seconds"] = 11.0  # busy 10 s of 11: the GPU bound it
    (advice,) = plan_capacity(whole, target_docs_per_hour=720_000).layout_advice
    assert "1.10-1.32x" in advice
    whole["metrics"]["stage0_active_seconds"] = 40.0  # busy 10 s of 40: it waited for its input
    (advice,) = plan_capacity(whole, target_docs_per_hour=720_000).layout_advice
    assert "Keep one actor per GPU" in advice and "busy 25%" in advice and "0.65-0.95x" in advice
    shared = make_summary(stages=[stage(0, 0, 6, 1000, 10.0, num_gpus=0.5)])
    assert plan_capacity(shared, target_docs_per_hour=720_000).layout_advice == []


def test_a_run_whose_first_pool_waited_for_input_is_flagged_with_the_rate_it_delivered():
    """1000 rows; stage 0 busy 10 s over an active span of 20 s with 1 actor: 50% busy, the
    feed delivered 1000 / 20 = 50 docs/s. Busy 18 s of 20 (90%): nothing to flag."""
    summary = make_summary()
    summary["metrics"]["stage0_active_seconds"] = 20.0
    notes = [a for a in plan_capacity(summary, target_docs_per_hour=720_000).assumptions if "active span" in a]
    assert len(notes) == 1 and "busy 50%" in notes[0] and "50 docs/s over the span" in notes[0]
    summary["stages"][0]["busy_seconds"] = 18.0
    assert not [a for a in plan_capacity(summary, target_docs_per_hour=720_000).assumptions if "active span" in a]
