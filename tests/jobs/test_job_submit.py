"""`ray job submit` of the tagging job to a local `ray start --head`, as a team runs it nightly."""

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import sys
from pathlib import Path

import mlflow
import psutil
import pyarrow.parquet as pq
import pytest

from offramp.config import ConfigError, MlflowConfig
from pipelines.store import JOB_ENV, check_tracking_uri

from tests.conftest import TEXTS

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    port, dash = free_port(), free_port()
    # the agents' fixed default ports may be held by another Ray on this machine (its agent then
    # never registers: "No available agent to submit job"): give each a free one
    agents = [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "runtime-env-agent-port", "metrics-export-port")]
    # as with an activated virtualenv: the job's `python` is the one the head runs with
    env = {**os.environ, "RAY_ADDRESS": "", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=8",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats", *agents],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    yield f"http://127.0.0.1:{dash}"
    stop_cluster(port)


def stop_cluster(port: int) -> None:
    """Stop this head's processes only (`ray stop` would stop every Ray on the machine): those
    of its session, found from its GCS server's command line, or naming its GCS address."""
    procs = list(psutil.process_iter(["cmdline"]))
    cmd = lambda p: " ".join(p.info["cmdline"] or [])  # noqa: E731
    gcs = [cmd(p) for p in procs if "gcs_server" in cmd(p) and f"--gcs_server_port={port}" in cmd(p)]
    session = re.search(r"(session_[0-9_-]+)", gcs[0]).group(1) if gcs else None
    ours = [p for p in procs if (session and session in cmd(p)) or f"127.0.0.1:{port}" in cmd(p)]
    for p in ours:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(ours, timeout=30)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_tag_corpus_under_ray_job_submit(head, tmp_path, model_dir, corpus_parquet):
    out = tmp_path / "tagged"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # absolute: the job's working directory is Ray's temporary copy
    runtime_env = {"excludes": [".venv", ".git", "mlflow.db", "demo"], "env_vars": {"MLFLOW_TRACKING_URI": uri}}
    for _ in range(18):  # a loaded machine starts the head's job agent late; Ray says "try again later"
        r = subprocess.run(
            [RAY, "job", "submit", "--address", head, "--working-dir", ".",
             "--runtime-env-json", json.dumps(runtime_env), "--",
             "python", "jobs/tag_corpus.py", "--input", corpus_parquet, "--model", model_dir,
             "--output", str(out), "--num-stages", "2", "--set", "max_length=64"],
            cwd=REPO, capture_output=True, text=True, env=env, timeout=900,
        )
        if "No available agent to submit job" not in r.stdout + r.stderr:
            break
        time.sleep(10)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "succeeded" in r.stdout
    assert f"tagged {len(TEXTS)} rows" in r.stdout
    table = pq.read_table(out)
    assert table.num_rows == len(TEXTS) and len(set(table["id"].to_pylist())) == len(TEXTS)
    manifest = json.loads((out / "_manifest.json").read_text())  # complete, and says so
    assert manifest["rows_in"] == manifest["rows_out"] == len(TEXTS)
    # the run is in the store the job was given, not lost with Ray's working directory
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("offramp-tag").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["rows"] == len(TEXTS)
    assert runs[0].data.params["num_stages"] == "2" and runs[0].data.params["task"] == "sequence"


def test_a_relative_mlflow_store_under_a_job_fails_at_start_naming_the_fix(monkeypatch):
    monkeypatch.setenv(JOB_ENV, "{}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="would be lost.*env_vars"):
        check_tracking_uri(MlflowConfig())  # the default sqlite:///mlflow.db
    check_tracking_uri(MlflowConfig(tracking_uri="sqlite:////shared/mlflow.db"))
    check_tracking_uri(MlflowConfig(tracking_uri="http://mlflow:5000"))
    monkeypatch.delenv(JOB_ENV)
    check_tracking_uri(MlflowConfig())  # a local run keeps its store in the working directory
