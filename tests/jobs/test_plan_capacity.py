"""jobs/plan_capacity.py as a user runs it, against a tagging run logged to a temporary MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest


from tests.conftest import make_summary

# each test runs a job in a subprocess (a torch import, seconds each): out of the quick loop
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run(
        [sys.executable, "jobs/plan_capacity.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def logged_run(tmp_path):
    """(tracking uri, run id) of a run holding the synthetic run_summary.json."""
    uri = f"sqlite:///{tmp_path}/m.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("offramp-tag", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_dict(run_id, make_summary(run_id=run_id), "run_summary.json")
    client.set_terminated(run_id)
    return uri, run_id


def test_target_plan_is_printed_and_written_as_json(logged_run, tmp_path):
    uri, run_id = logged_run
    out = tmp_path / "plan.json"
    r = run("--run-id", run_id, "--tracking-uri", uri, "--target-docs-per-hour", "720000", "--headroom", "1",
            "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads(out.read_text())
    # 200 docs/s: 200 / 100 = 2 actors in stage 0, 200 * 0.4 / 25 = 3.2 -> 4 in stage 1 (half a GPU each)
    assert [s["actors"] for s in plan["stages"]] == [2, 4]
    assert plan["gpus"] == 3.0 and plan["gpu_hours_per_million_docs"] == pytest.approx(3e6 / 720_000)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["stage", "layers", "survival", "in", "docs/s", "per", "actor", "actors", "GPUs",
                                "CPUs", "utilization"]  # fmt: skip
    assert lines[1].split() == ["0", "1-3", "100.0%", "100.0", "2", "1", "2", "100%"]
    assert lines[2].split() == ["1", "4-6", "40.0%", "25.0", "4", "2", "4", "80%"]
    assert "4.17 GPU-hours" in r.stdout and "Assumptions:" in r.stdout and run_id in r.stdout


def test_gpu_budget_and_log_attach_the_plan_to_the_run(logged_run):
    uri, run_id = logged_run
    r = run("--run-id", run_id, "--tracking-uri", uri, "--budget-gpus", "4", "--headroom", "1", "--log")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "at most 1,080,000 docs/hour" in r.stdout  # (3, 5) half-GPU actors, see test_capacity
    client = mlflow.MlflowClient(uri)
    assert "capacity_plan.json" in [a.path for a in client.list_artifacts(run_id)]
    logged = mlflow.artifacts.load_dict(f"{client.get_run(run_id).info.artifact_uri}/capacity_plan.json")
    assert [s["actors"] for s in logged["stages"]] == [3, 5] and logged["budget_gpus"] == 4.0


def test_unknown_run_and_bad_goals_exit_2_with_the_fix(logged_run, command):
    uri, run_id = logged_run
    r = run("--run-id", "nosuchrun", "--tracking-uri", uri, "--target-docs-per-hour", "1000")
    assert r.returncode == 2 and "run 'nosuchrun' not found" in r.stderr and "--run-id" in r.stderr
    client = mlflow.MlflowClient(uri)
    bare = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id  # e.g. a training run
    status, _, err = command("plan", "--run-id", bare, "--tracking-uri", uri, "--target-docs-per-hour", "1000")
    assert status == 2 and "has no run_summary.json" in err and "re-run jobs/tag_corpus.py" in err
    status, _, err = command("plan", "--run-id", run_id, "--tracking-uri", uri, "--budget-gpus", "0.5")
    assert status == 2 and "pass --budget-gpus 1 or more" in err
    status, _, err = command("plan", "--run-id", run_id, "--tracking-uri", uri)  # no goal: names the flags
    assert status == 2 and "--target-docs-per-hour" in err


H200 = REPO / "benchmarks/results/gpu/2026-11-26"


def test_gpu_plan_from_a_measured_h200_run_summary_file(tmp_path):
    """GPU capacity from a run measured on an H200 (bench_gpu.py, 1M short texts, MiniLM with
    exits, one actor on the whole GPU), read from its run_summary.json file: stage 0 took
    1,000,000 rows in 16.08 busy actor-seconds, so 8 GPUs at headroom 1 buy 8 x 1e6 / 16.08 docs/s.
    The plan says that run was feed-bound and which layout measured faster."""
    path = H200 / "run_summary_minilm_exits_1actor.json"
    summary = json.loads(path.read_text())
    (st,) = summary["stages"]
    assert st["device"] == "cuda" and st["num_gpus"] == 1.0  # a real GPU run, not a synthetic one
    out = tmp_path / "plan.json"
    r = run("--summary", str(path), "--budget-gpus", "8", "--headroom", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads(out.read_text())
    rate = st["rows_in"] / st["busy_seconds"]
    assert plan["stages"][0]["actors"] == 8 and plan["gpus"] == 8.0
    assert plan["docs_per_hour"] == pytest.approx(8 * rate * 3600, rel=1e-6)
    assert "busy 55% of its active span" in r.stdout and "34,283 docs/s over the span" in r.stdout
    assert "two actors at num_gpus 0.5" in r.stdout


def test_summary_file_errors_name_the_fix(tmp_path, command):
    status, _, err = command("plan", "--summary", str(tmp_path / "none.json"), "--budget-gpus", "1")
    assert status == 2 and "no such file" in err and "--run-id" in err
    (tmp_path / "bad.json").write_text("{not json")
    status, _, err = command("plan", "--summary", str(tmp_path / "bad.json"), "--budget-gpus", "1")
    assert status == 2 and "not a readable JSON run summary" in err
    status, _, err = command("plan", "--budget-gpus", "1")  # neither
    assert status == 2 and "--run-id ID (MLflow) or --summary" in err
    status, _, err = command("plan", "--run-id", "x", "--summary", "y.json", "--budget-gpus", "1")  # both
    assert status == 2 and "--run-id ID (MLflow) or --summary" in err
    status, _, err = command("plan", "--summary", "y.json", "--budget-gpus", "1", "--log")
    assert status == 2 and "--log attaches the plan to an MLflow run" in err
