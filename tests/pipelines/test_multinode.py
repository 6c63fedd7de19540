"""The pipeline on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`:
three nodes, each its own raylet, object store and worker processes): the stage actors spread over
the nodes, a worker node killed mid-run, the driver killed mid-run and the run resumed. Every test
checks that each input row comes out exactly once.

The layout makes the spread certain, not likely: each node has 2 CPUs and each stage actor
reserves 1.5, so no node holds two stage actors, and the third node has room for the actor of a
killed node. Read, tokenize, finalize and write tasks take the CPUs left over on every node."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

import pipelines.cluster
import pipelines.run
from actors.collector import MetricsCollector
from actors.stage import StageActor
from offramp import schema
from offramp.config import AuditConfig, MlflowConfig, RayConfig, StageConfig, TagConfig
from pipelines import run_tagging
from tests.conftest import NUM_LAYERS, TEXTS

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROWS = 2000  # with 16-row batches 125 per stage: a run lasts long enough to be killed in
BATCH = 16
NODE_CPUS = 2
STAGE_CPUS = 1.5  # more than half a node's CPUs: one stage actor per node
WORKERS = 2  # with the head, a node for each of the two stage actors and one for a killed node's actor


@pytest.fixture(scope="module")
def cluster():
    """A head and two worker nodes; this process is the driver, on the head. A dead node is
    noticed after ~8 s of missed health checks (Ray's default is 15 s)."""
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "include_dashboard": False,
            "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                               "health_check_failure_threshold": 8},
        },
    )
    for _ in range(WORKERS):
        c.add_node(num_cpus=NODE_CPUS)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def nodes(cluster):
    """The cluster with all its worker nodes: one a test killed is replaced by a fresh one."""
    while len(cluster.worker_nodes) < WORKERS:
        cluster.add_node(num_cpus=NODE_CPUS)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list[str]]:
    path = tmp_path_factory.mktemp("multinode") / "corpus.parquet"
    ids = [f"doc{i}" for i in range(ROWS)]
    pq.write_table(pa.table({"id": ids, "text": [TEXTS[i % len(TEXTS)] for i in range(ROWS)]}), path,
                   row_group_size=500)  # several read tasks
    return str(path), ids


def stages() -> tuple[StageConfig, ...]:
    half = NUM_LAYERS // 2
    return tuple(StageConfig(layers=r, batch_size=BATCH, num_cpus=STAGE_CPUS, min_actors=1, max_actors=1)
                 for r in ((0, half), (half, NUM_LAYERS)))


def config(tmp_path, corpus, model_dir, address) -> TagConfig:
    return TagConfig(
        input=corpus, model=model_dir, output=str(tmp_path / "out"), id_column="id", text_column="text",
        max_length=64, batch_size=BATCH, tokenize_batch_size=BATCH, stages=stages(),
        audit=AuditConfig(fraction=0.05), ray=RayConfig(address=address),
        mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test"),
    )


def recording(marks: Path):
    """A StageActor that leaves a file for its start (stage, node, pid) and for every batch it
    finished: where the actors ran and how far the run is, without timing anything."""

    class Recording(StageActor):
        def __init__(self, model_dir, spec, collector=None, finalize=None):
            super().__init__(model_dir, spec, collector, finalize)
            self.node = ray.get_runtime_context().get_node_id()
            (marks / f"actor-{spec.index}-{self.node}-{os.getpid()}").touch()

        def __call__(self, batch):
            out = super().__call__(batch)
            (marks / f"batch-{self.spec.index}-{self.node}-{os.getpid()}-{time.monotonic_ns()}").touch()
            return out

    return Recording


def recording_collector(marks: Path):
    """The run's MetricsCollector, leaving a file that names the node it runs on."""

    class Recording(MetricsCollector):
        def __init__(self):
            super().__init__()
            (marks / f"collector-{ray.get_runtime_context().get_node_id()}").touch()

    return Recording


def collector_node(marks: Path) -> str:
    return next(marks.glob("collector-*")).name.split("-")[1]


def actor_nodes(marks: Path) -> dict[int, list[str]]:
    """{stage: node ids its actors started on, in order of start}."""
    out = collections.defaultdict(list)
    for p in sorted(marks.glob("actor-*"), key=lambda p: p.stat().st_mtime_ns):
        _, stage, node, _ = p.name.split("-")
        out[int(stage)].append(node)
    return out


def assert_each_row_once(output: str, ids: list[str]) -> None:
    got = collections.Counter(pq.read_table(output, columns=["id"]).column("id").to_pylist())
    twice = [i for i, n in got.items() if n > 1]
    missing = set(ids) - set(got)
    assert not twice and not missing, f"{len(twice)} rows twice (e.g. {twice[:5]}), {len(missing)} missing"
    assert sum(got.values()) == len(ids) and set(got) == set(ids)


def wait_for(condition, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(poll)


def test_stage_actors_run_on_different_nodes_and_every_row_comes_out_once(nodes, tmp_path, model_dir, corpus, monkeypatch):
    path, ids = corpus
    marks = tmp_path / "marks"
    marks.mkdir()
    probed = []
    real_reports = pipelines.cluster.node_reports
    monkeypatch.setattr(pipelines.cluster, "node_reports", lambda e, n: probed.append(real_reports(e, n)) or probed[-1])
    cfg = config(tmp_path, path, model_dir, nodes.address)
    result = run_tagging(cfg, stage_cls=recording(marks))

    # the path check ran a task on every node, and every node saw the model, input and output
    assert len(probed) == 1 and len(probed[0]) == WORKERS + 1 and all(p == {} for p in probed[0].values())
    placed = actor_nodes(marks)
    assert len(placed[0]) == len(placed[1]) == 1, placed  # one actor per stage, never restarted
    assert placed[0][0] != placed[1][0], placed  # apart
    assert {placed[0][0], placed[1][0]} <= {n.node_id for n in nodes.list_all_nodes()}
    batches = collections.Counter(p.name.split("-")[2] for p in marks.glob("batch-*"))
    assert batches[placed[0][0]] > 0 and batches[placed[1][0]] > 0  # both nodes did stage work
    assert_each_row_once(cfg.output, ids)
    assert result.metrics["rows"] == ROWS and result.metrics["stage0_rows_in"] == ROWS


def test_a_worker_node_killed_mid_run_loses_and_duplicates_no_row(nodes, tmp_path, model_dir, corpus, monkeypatch):
    """A worker node holding a stage actor is killed (raylet, object store and workers, as when a
    machine goes away) after stage 1 finished a few batches; the actor restarts on the node left
    free, the lost blocks are recomputed, and the run completes."""
    path, ids = corpus
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(pipelines.run, "MetricsCollector", recording_collector(marks))
    cfg = config(tmp_path, path, model_dir, nodes.address)
    outcome = {}

    def run():
        try:
            outcome["result"] = run_tagging(cfg, stage_cls=recording(marks))
        except BaseException as e:  # noqa: BLE001  (reported by the test below)
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: len(list(marks.glob("batch-1-*"))) >= 3 or not thread.is_alive(), 150, "stage 1's first batches")
    assert thread.is_alive(), f"the run ended before a node could be killed: {outcome}"
    placed = actor_nodes(marks)
    workers = {n.node_id: n for n in nodes.worker_nodes}  # the head runs the driver: not that one
    stage = 1 if placed[1][-1] in workers else 0
    victim_id = placed[stage][-1]
    victim = workers[victim_id]
    done_before = len(list(marks.glob("batch-1-*")))
    nodes.remove_node(victim, allow_graceful=False)
    thread.join(timeout=150)
    assert not thread.is_alive(), "the run did not finish after the node was killed"

    # what the run cannot lose must live where the run itself dies anyway: on the driver's node
    driver = ray.get_runtime_context().get_node_id()
    assert collector_node(marks) == driver, (
        f"the metrics collector ran on worker node {collector_node(marks)[:8]}, not the driver's {driver[:8]}: losing "
        f"that node {'failed this run' if 'error' in outcome else 'would fail a run'} ({outcome.get('error')!r:.300})")
    assert "error" not in outcome, repr(outcome.get("error"))
    placed = actor_nodes(marks)
    assert len(placed[stage]) >= 2 and placed[stage][-1] != victim_id, placed  # restarted on another node
    assert done_before < ROWS / BATCH / 2  # the node died in the first half of the run, not after it
    assert_each_row_once(cfg.output, ids)
    assert outcome["result"].metrics["rows"] == ROWS
    assert not any(n["NodeID"] == victim_id and n["Alive"] for n in ray.nodes())


def test_a_killed_driver_resumed_with_resume_writes_every_row_once(nodes, tmp_path, model_dir, corpus):
    """`python jobs/tag_corpus.py` joins the cluster (RAY_ADDRESS), is SIGKILLed once its first
    output file is written, and the same command with --resume completes the output: each row
    once, and the manifest that certifies a finished output."""
    path, ids = corpus
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": nodes.address, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    args = [sys.executable, "jobs/tag_corpus.py", "--input", path, "--model", model_dir, "--output", str(out),
            "--text-column", "text", "--id-column", "id", "--max-length", "64", "--tokenize-batch-size", str(BATCH),
            "--batch-size", str(BATCH), "--min-rows-per-file", "64", "--max-rows-per-file", "256",
            "--set", "mlflow.enabled=false",
            "--set", "stages=[" + ", ".join(f"{{layers: [{s.layers[0]}, {s.layers[1]}], batch_size: {BATCH}, "
                                            f"num_cpus: {STAGE_CPUS}, min_actors: 1, max_actors: 1}}" for s in stages()) + "]"]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: any(out.glob("*.parquet")) or first.poll() is not None, 150, "the first output file", poll=0.02)
            assert first.poll() is None, f"the run ended before it was killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == -signal.SIGKILL and not (out / "_manifest.json").exists()  # killed mid-run

    second = subprocess.run([*args, "--resume"], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, (second.stdout[-3000:], second.stderr[-3000:])
    assert (out / "_manifest.json").exists()
    assert_each_row_once(str(out), ids)
    source_rows = pq.read_table(out, columns=[schema.SOURCE_ROW]).column(0).to_pylist()
    assert len(set(source_rows)) == ROWS  # the checkpoint key: unique per input row
