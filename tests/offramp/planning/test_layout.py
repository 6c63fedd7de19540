import pytest

from offramp.config import ConfigError, StageConfig, TagConfig
from offramp.planning.layout import plan_layout, split_layers


def test_even_split_covers_all_layers():
    assert split_layers(6, 3, None, balanced=False) == [(0, 2), (2, 4), (4, 6)]
    assert split_layers(6, 6, None, balanced=False)[-1] == (5, 6)
    with pytest.raises(ConfigError, match="1..6"):
        split_layers(6, 7, None, balanced=False)


def test_balanced_split_gives_deeper_stages_more_layers_when_rows_exit():
    survival = [0.5, 0.3, 0.2, 0.15, 0.1, 0.0]
    ranges = split_layers(6, 2, survival, balanced=True)
    assert ranges[0][0] == 0 and ranges[-1][1] == 6
    assert ranges[0][1] - ranges[0][0] < ranges[1][1] - ranges[1][0]


def test_batch_sizes_and_actors_follow_survival():
    cfg = TagConfig(batch_size=64, stages=(StageConfig(layers=(0, 2), max_actors=4), StageConfig(layers=(2, 6))))
    plan = plan_layout(cfg, 6, [0.5, 0.25, 0.2, 0.1, 0.05, 0.0], exits_enabled=True)
    assert plan[0].batch_size == 64 and plan[1].batch_size == 256  # 64 running rows / 0.25 survival
    assert plan[1].survival == 0.25
    assert 1 <= plan[1].max_actors <= 4
    full = plan_layout(cfg, 6, [0.5, 0.25, 0.2, 0.1, 0.05, 0.0], exits_enabled=False)
    assert full[1].batch_size == 64  # at full depth every row runs every stage


def test_bad_layouts_name_the_fix():
    with pytest.raises(ConfigError, match="contiguously"):
        plan_layout(TagConfig(stages=(StageConfig(layers=(0, 2)), StageConfig(layers=(3, 6)))), 6, None, True)
    with pytest.raises(ConfigError, match="every stage or for none"):
        plan_layout(TagConfig(stages=(StageConfig(layers=(0, 2)), StageConfig())), 6, None, True)


def test_local_runs_share_the_machines_cores_among_cpu_stage_actors(monkeypatch):
    from pipelines.run import local_torch_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    cfg = TagConfig(stages=(StageConfig(layers=(0, 2), max_actors=2), StageConfig(layers=(2, 6), max_actors=2)))
    plan = local_torch_threads(plan_layout(cfg, 6, None, exits_enabled=True))
    assert [p.spec.torch_threads for p in plan] == [2, 2]
    pinned = TagConfig(stages=(StageConfig(torch_threads=3),))
    assert local_torch_threads(plan_layout(pinned, 6, None, True))[0].spec.torch_threads == 3


def test_a_local_run_gives_stage_0_a_cpu_actor_per_core_on_one_thread_each(monkeypatch):
    """Processes over threads on a local run's CPU (BENCHMARKS.md, "A process per core"): stage 0's
    pool gets one actor per core when its config leaves the count unset, within half of Ray's CPUs;
    a count, a GPU or pinned threads the user gave win."""
    from offramp.config import RayConfig
    from pipelines.run import local_cpu_actors, local_torch_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cfg = TagConfig()
    plan = local_torch_threads(plan_layout(cfg, 6, None, True, cpu_actors=local_cpu_actors(cfg)))
    assert (plan[0].min_actors, plan[0].max_actors, plan[0].spec.torch_threads) == (2, 2, 1)
    assert plan_layout(cfg, 6, None, True)[0].min_actors == 1  # a cluster run: Ray's rule
    two = TagConfig(num_stages=2)
    plan = plan_layout(two, 6, [0.5, 0.25, 0.2, 0.1, 0.05, 0.0], True, cpu_actors=2)
    assert [p.min_actors for p in plan] == [2, 1], "deeper pools keep a minimum of one"
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert local_cpu_actors(TagConfig()) == 8, "ray.num_cpus unset: one per core, capped (a model copy per actor)"
    assert local_cpu_actors(TagConfig(ray=RayConfig(num_cpus=8))) == 4, "half of the embedded Ray's 8 logical CPUs"
    assert local_cpu_actors(TagConfig(ray=RayConfig(num_cpus=32))) == 8, "capped: a model copy per actor"
    assert local_cpu_actors(TagConfig(stages=(StageConfig(torch_threads=8),))) == 2
    assert local_cpu_actors(TagConfig(stages=(StageConfig(num_cpus=4),))) == 4, "16 cores at 4 a piece"
    assert local_cpu_actors(TagConfig(stages=(StageConfig(num_cpus=4),), ray=RayConfig(num_cpus=8))) == 1
    for given, actors in ((StageConfig(min_actors=1), 1), (StageConfig(max_actors=1), 1),
                          (StageConfig(num_gpus=0.5), 1), (StageConfig(min_actors=3), 3)):
        planned = plan_layout(TagConfig(stages=(given,)), 6, None, True, cpu_actors=4)[0]
        assert planned.min_actors == actors and planned.min_actors <= planned.max_actors, given


def test_an_embedded_ray_gets_the_actors_reservations_plus_a_cpu_per_core_for_the_tasks(monkeypatch):
    """ray.num_cpus unset (BENCHMARKS.md, "Stop 39"): enough logical CPUs
    for the stage actors and the read, tokenize and write tasks, not a fixed 8 that lets idle
    workers boot beside the stages; what the user sets wins."""
    import ray

    from offramp.config import RayConfig
    from pipelines.run import init_ray, local_cpu_actors, local_ray_cpus

    monkeypatch.setattr("os.cpu_count", lambda: 2)

    def cpus(cfg: TagConfig, resume: bool = False) -> int:
        planned = plan_layout(cfg, 6, [0.5, 0.25, 0.2, 0.1, 0.05, 0.0], True, cpu_actors=local_cpu_actors(cfg))
        return local_ray_cpus(planned, cfg.rebatch, resume)

    assert cpus(TagConfig()) == 4, "two actors (one per core) + two cores' tasks"
    assert cpus(TagConfig(num_stages=3)) == 6, "2 + 1 + 1 actors + 2"
    assert cpus(TagConfig(), resume=True) == 5, "the resume checkpoint filter's CPU"
    demo = TagConfig(num_stages=2, rebatch=4, stages=(StageConfig(min_actors=1), StageConfig()))
    assert cpus(demo) == 4, "one rebatching actor: at least two per core"
    assert cpus(TagConfig(stages=(StageConfig(num_cpus=1.5, min_actors=3),))) == 7, "4.5 reserved, rounded up, + 2"
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert cpus(TagConfig()) == 32, "8 actors (capped) + 16 < 2 per core"

    started = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: started.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(RayConfig(), 6)
    assert started["num_cpus"] == 6
    init_ray(RayConfig(num_cpus=3), 6)
    assert started["num_cpus"] == 3, "the user's ray.num_cpus wins"
    init_ray(RayConfig())
    assert started["num_cpus"] == 8, "no plan (the online endpoint): Ray's CPUs as before"
    with pytest.raises(ConfigError, match="ray.num_cpus=0"):
        RayConfig(num_cpus=0)


def test_the_output_table_comes_from_the_last_cpu_actor_and_from_a_task_after_a_gpu_one():
    from pipelines.run import finalize_in_actor

    cpu = plan_layout(TagConfig(num_stages=2), 6, None, True)
    assert finalize_in_actor(cpu) and finalize_in_actor(cpu, rebatch=4)
    gpu_last = plan_layout(TagConfig(stages=(StageConfig(), StageConfig(num_gpus=1))), 6, None, True)
    assert not finalize_in_actor(gpu_last), "a GPU actor's host thread feeds the device"
    assert not finalize_in_actor(gpu_last, rebatch=4), "the one pool has the GPU"
    gpu_first = plan_layout(TagConfig(stages=(StageConfig(num_gpus=1), StageConfig())), 6, None, True)
    assert finalize_in_actor(gpu_first) and not finalize_in_actor(gpu_first, rebatch=4)


def test_a_small_full_depth_sample_runs_on_one_actor_a_large_one_on_the_runs_default():
    from pipelines.run import ONE_ACTOR_SAMPLE_ROWS, full_depth_sample_stages

    small = full_depth_sample_stages(TagConfig(num_stages=2, full_depth_eval_rows=500))
    assert [s.min_actors for s in small] == [1, None]
    assert full_depth_sample_stages(TagConfig(full_depth_eval_rows=ONE_ACTOR_SAMPLE_ROWS + 1))[0].min_actors is None
    assert full_depth_sample_stages(TagConfig(full_depth_eval_rows=-1))[0].min_actors is None, "every row"
    given = TagConfig(full_depth_eval_rows=500, stages=(StageConfig(min_actors=3),))
    assert full_depth_sample_stages(given)[0].min_actors == 3, "a count the user gave stands"


def test_stages_compute_in_the_runs_dtype_unless_they_set_their_own():
    cfg = TagConfig(dtype="bfloat16", stages=(StageConfig(layers=(0, 2)), StageConfig(layers=(2, 6), dtype="float32")))
    assert [p.spec.dtype for p in plan_layout(cfg, 6, None, True)] == ["bfloat16", "float32"]
    assert plan_layout(TagConfig(num_stages=2), 6, None, True)[1].spec.dtype == "float32"
    with pytest.raises(ConfigError, match="dtype 'bf16' is not one of"):
        TagConfig(dtype="bf16")
