"""Scale benchmark (issue 14): the real tagging job over a 100k / 1M / 5M-row corpus of many files.

    .venv/bin/python benchmarks/bench_scale.py --sizes 100000 1000000 [--work /tmp/offramp_scale] [-- --set KEY=VALUE ...]
    .venv/bin/python benchmarks/bench_scale.py --sizes 5000000          # adds a row to scale.json/scale.md
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000 --env RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION=0.05 \
        --stop-after 900 --out benchmarks/results/scale_bounded.json    # a variant, its first 15 minutes

What is measured, and why:

* The corpus is generated once per size into WORK/corpus/<rows>_<kind>/ and reused (its manifest
  beside it): JSONL files of `--rows-per-file` rows, every `--gzip-every`-th one gzipped when the
  reader accepts `.jsonl.gz` (probed, not assumed). Every row is a real Debian package description
  from ../shared/data/debian_sections drawn at random (seeded); CONCAT_SHARE of rows get a second
  description appended, so the length tail (and truncation) is real too. Generation streams one
  file at a time: 5M rows need no more memory than 100k (~400 MiB).
* The model is a tiny random early-exit BERT (4 layers, hidden 32, the MiniLM tokenizer, the 30
  section labels) with entropy thresholds that make rows leave at every layer, so the run
  measures the pipeline (read, tokenize, stage actors, finalize, write, metrics), not a model.
* The job is the real one, `jobs/tag_corpus.py`, run as a subprocess (embedded local Ray), with
  max_rows_per_file when the config has it. While it runs, a thread samples the job process and
  every one of its descendants (raylet, gcs_server, agents, every Ray worker):
    - every `--interval` s, RSS (VmRSS) split into anonymous, file-backed and shared-memory pages
      (/proc/PID/status); every `--pss-every` s, PSS (/proc/PID/smaps_rollup, costly to read).
      Summed RSS is what the issue reported; it counts a page once per process that maps it
      (each worker's torch libraries, the object store pages a worker wrote or read), so it
      overstates physical memory. Summed PSS splits every shared page among its users: it is
      the physical memory the job's processes hold.
    - each process's kind: driver, raylet, gcs_server, the agents, and for Ray workers their
      process title (`ray::MapWorker(MapBatches(StageActor))`, a read or map task, `ray::IDLE`).
  The object store is measured two ways: the physical pages of the plasma file (the raylet's
  open /dev/shm/plasma* file, st_blocks: what it holds in RAM) and Ray's own accounting,
  object_store_memory total - available and bytes spilled, from the raylet's debug_state.txt
  (rewritten every ~10 s).
* docs/s is the job's own figure (rows / wall time of the Ray Data write), read back from its
  MLflow run (a store in WORK); the job's end-to-end wall time (Ray start, metrics, MLflow) too.
* The output is checked from Parquet footers: file count, min/max/total size, rows, and the
  number of distinct ids (exactly one output row per input row); the job's _manifest.json too.

Results: OUT (benchmarks/results/scale.json) and OUT.md (a table per size, what the summed RSS
is made of at its peak, the peak by process group, a linear projection to 10M rows), plus
OUT_timeseries_<rows>.json.gz (the samples by process kind, every 2 s) to see what grows during a
run. Sizes measured by earlier invocations stay in OUT unless --no-keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from offramp.config.tag import RayConfig  # noqa: E402
from sampling import Sampling  # noqa: E402

DATA = os.path.join(REPO, "..", "shared", "data", "debian_sections")
RESULTS = os.path.join(REPO, "benchmarks", "results")
CONCAT_SHARE = 0.15  # rows that get a second description appended
GiB, MiB = 2**30, 2**20
CORPUS_VERSION = 1  # bump when the generator changes: cached corpora are then rebuilt


# ---------------------------------------------------------------- the corpus


def gzip_supported() -> bool:
    """Whether the reader takes `.jsonl.gz` beside `.jsonl` as JSONL (pipelines/read.py is being
    rewritten to stream gzip): probed on two tiny files, never assumed."""
    from offramp.config import ConfigError
    from pipelines.read import detect_format

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "a.jsonl"), "w") as f:
            f.write('{"id": "a", "text": "x"}\n')
        with gzip.open(os.path.join(d, "b.jsonl.gz"), "wt") as f:
            f.write('{"id": "b", "text": "y"}\n')
        try:
            return detect_format(d) == "jsonl" and detect_format(os.path.join(d, "b.jsonl.gz")) == "jsonl"
        except ConfigError:
            return False


def load_pool() -> tuple[list[str], list[str]]:
    """Every real description (train, dev, test) and its section: 58,383 rows, ~400 characters on average."""
    texts, labels = [], []
    for split in ("train", "dev", "test"):
        t = pq.read_table(os.path.join(DATA, f"{split}.parquet"), columns=["text", "label"])
        texts += t["text"].to_pylist()
        labels += t["label"].to_pylist()
    return texts, labels


def corpus_file_rows(pool, file_index: int, start: int, count: int, seed: int) -> list[str]:
    """JSON lines of one file: ids doc<global row number>, a drawn description (sometimes two)."""
    texts, labels = pool
    rng = np.random.default_rng([seed, file_index])
    first = rng.integers(len(texts), size=count)
    second = rng.integers(len(texts), size=count)
    concat = rng.random(count) < CONCAT_SHARE
    lines = []
    for i in range(count):
        text = texts[first[i]] + (" " + texts[second[i]] if concat[i] else "")
        lines.append(json.dumps({"id": f"doc{start + i:09d}", "text": text, "label": labels[first[i]]}))
    return lines


def generate_corpus(rows: int, root: str, rows_per_file: int, seed: int, gzip_every: int) -> dict:
    """Write (or reuse) the corpus under `root`; return its manifest. One file in memory at a time."""
    params = dict(version=CORPUS_VERSION, rows=rows, rows_per_file=rows_per_file, seed=seed, gzip_every=gzip_every,
                  concat_share=CONCAT_SHARE)
    manifest_path = root.rstrip("/") + ".manifest.json"  # beside the corpus: inside, it would be read as JSONL
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest["params"] == params:
            return manifest
    shutil.rmtree(root, ignore_errors=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    os.makedirs(root)
    pool = load_pool()
    t0, chars, files = time.perf_counter(), 0, []
    for k in range(math.ceil(rows / rows_per_file)):
        start = k * rows_per_file
        lines = corpus_file_rows(pool, k, start, min(rows_per_file, rows - start), seed)
        chars += sum(len(json.loads(line)["text"]) for line in lines[:2000]) * len(lines) / min(len(lines), 2000)
        name = f"part-{k:05d}.jsonl" + (".gz" if gzip_every and k % gzip_every == gzip_every - 1 else "")
        data = ("\n".join(lines) + "\n").encode()
        tmp = os.path.join(root, "." + name + ".tmp")  # a dot file: never read as input
        with (gzip.open(tmp, "wb", compresslevel=6) if name.endswith(".gz") else open(tmp, "wb")) as f:
            f.write(data)
        os.rename(tmp, os.path.join(root, name))
        files.append(name)
    manifest = dict(params=params, files=len(files), gz_files=sum(f.endswith(".gz") for f in files),
                    bytes=sum(os.path.getsize(os.path.join(root, f)) for f in files),
                    mean_text_chars=chars / rows, seconds=time.perf_counter() - t0)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


# ---------------------------------------------------------------- the model


def build_tiny_model(path: str, sample_texts: list[str], labels: list[str], seed: int = 0) -> str:
    """A tiny random early-exit BERT saved as jobs/train_exits.py saves one (weights, tokenizer,
    thresholds in config.json, survival in exit_profile.json), as tests/conftest.py builds them.
    Entropy thresholds sit at the 35% quantile of each head's scores on real descriptions, so
    rows exit at every layer and the stage actors see the survival a trained model gives."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import AutoTokenizer, BertConfig

    from offramp.exits.simulate import head_scores
    from offramp.models.checkpoint import default_base_model
    from offramp.models.sequence import EarlyExitBertForSequenceClassification
    from offramp.policies import get_policy
    from offramp.training.loop import all_head_logits

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=512, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        initializer_range=0.5)
    model = EarlyExitBertForSequenceClassification(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    scores = head_scores(get_policy("entropy"), all_head_logits(model, tokenizer, sample_texts, max_length=128))
    thresholds = [float(np.quantile(scores[:, k], 0.35)) for k in range(scores.shape[1])]
    model.config.exit_thresholds = thresholds
    exited = np.cumsum(scores < np.array(thresholds)[None, :], axis=1) > 0
    survival = [float(s) for s in 1 - exited.mean(axis=0)]  # still running after each layer
    survival[-1] = 0.0
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    model.save_profile(tmp, {"dev_survival": survival})
    os.rename(tmp, path)
    return path


# ---------------------------------------------------------------- memory sampling


STATUS_KEYS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}


def read_proc_memory(pid: int) -> dict | None:
    """Bytes of one process: rss (VmRSS), anon, file, shmem (RssAnon/RssFile/RssShmem). Cheap."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in STATUS_KEYS:
                    out[STATUS_KEYS[key]] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return out if "rss" in out else None


def read_pss(pid: int) -> int | None:
    """PSS of one process (/proc/PID/smaps_rollup). The kernel walks the page tables for it:
    ~50 ms for a torch worker on a loaded machine, so it is read every `pss_every` s, not each sample."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def process_kind(proc: psutil.Process, job_pid: int) -> str:
    """driver / raylet / gcs_server / an agent / a Ray worker's title (ray::...), stripped of arguments."""
    if proc.pid == job_pid:
        return "driver"
    name = proc.name()
    if name in ("raylet", "gcs_server"):
        return name
    cmd = proc.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        title = cmd[0].split(" ")[0]  # ray::Class.method while an actor runs a method: the class
        return title[: title.rfind(".")] if "." in title.rsplit(")", 1)[-1] else title
    joined = " ".join(cmd)
    if "workers/default_worker.py" in joined or "workers/setup_worker.py" in joined:
        return "ray::(starting)"  # a worker before it has set its title
    for script, kind in (("log_monitor.py", "log_monitor"), ("autoscaler/_private/monitor.py", "autoscaler_monitor"),
                         ("dashboard/dashboard.py", "dashboard"), ("dashboard/agent.py", "ray::DashboardAgent")):
        if script in joined:
            return kind
    return name


RAY_DATA_ACTORS = ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker", "SplitCoordinator")


def worker_group(kind: str) -> str:
    """Coarse groups for the breakdown: the stage actors, the metrics collector, Ray Data's own
    actors, workers running Ray Data's tasks (read, tokenize, finalize, write: their titles name
    the fused operators), idle workers (a finished task's process, kept for reuse)."""
    if "StageActor" in kind:
        return "stage actors"
    if "MetricsCollector" in kind:
        return "MetricsCollector actor"
    if any(name in kind for name in RAY_DATA_ACTORS):
        return "Ray Data's actors (stats, autoscaling, locations)"
    if kind in ("ray::IDLE", "ray::(starting)"):
        return "idle workers"
    if kind in ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "dashboard", "log_monitor", "autoscaler_monitor"):
        return "agents and monitors"
    if kind.startswith("ray::"):
        return "Ray Data tasks (read, tokenize, finalize, write)"
    return kind


class RaySampler(Sampling):
    """Samples the memory of the job process and all its descendants every `interval` s (a thread)."""

    def __init__(self, job_pid: int, interval: float = 0.5, pss_every: float = 5.0):
        self.job_pid, self.interval, self.pss_every = job_pid, interval, pss_every
        self._pss: dict[int, int] = {}  # pid -> last PSS read (carried between reads)
        self._pss_at = -pss_every
        self.samples: list[dict] = []  # {t, rss, pss, anon, driver_rss, plasma, kinds: {kind: rss}}
        self.per_pid: dict[int, dict] = {}  # pid -> {kinds seen, peak rss, peak pss}
        self.session_dir = None
        self.plasma_capacity = None
        self._plasma_fd = None
        self.t0 = time.perf_counter()

    def _processes(self) -> list[psutil.Process]:
        try:
            job = psutil.Process(self.job_pid)
            return [job] + job.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _find_raylet(self, proc: psutil.Process) -> None:
        """The session directory and the plasma file, from the raylet's command line and open files."""
        cmd = " ".join(proc.cmdline())
        m = re.search(r"--raylet_socket_name=(\S+)/sockets/raylet", cmd)
        self.session_dir = m.group(1) if m else None
        m = re.search(r"--object_store_memory=(\d+)", cmd)
        self.plasma_capacity = int(m.group(1)) if m else None
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            try:
                if os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("/dev/shm/plasma"):
                    self._plasma_fd = f"/proc/{proc.pid}/fd/{fd}"
            except OSError:
                pass

    def plasma_bytes(self) -> int:
        """Physical pages of the object store's /dev/shm file (0 before the raylet has it)."""
        try:
            return os.stat(self._plasma_fd).st_blocks * 512 if self._plasma_fd else 0
        except OSError:
            return 0

    def sample(self) -> None:
        try:
            self.read()
        except psutil.NoSuchProcess:  # the job ended between listing its processes and reading them
            pass

    def read(self) -> None:
        kinds, kinds_anon, totals, driver, live = defaultdict(int), defaultdict(int), defaultdict(int), 0, 0
        now = time.perf_counter() - self.t0
        fresh_pss = now - self._pss_at >= self.pss_every
        if fresh_pss:
            self._pss_at = now
        for proc in self._processes():
            try:
                kind = process_kind(proc, self.job_pid)
                if kind == "raylet" and self._plasma_fd is None:
                    self._find_raylet(proc)
            except (psutil.Error, OSError):
                continue
            mem = read_proc_memory(proc.pid)
            if mem is None:
                continue
            if fresh_pss or proc.pid not in self._pss:
                self._pss[proc.pid] = read_pss(proc.pid) or 0
            mem["pss"] = self._pss[proc.pid]
            kinds[kind] += mem["rss"]
            kinds_anon[kind] += mem.get("anon", 0)
            live += 1
            for key in ("rss", "pss", "anon", "file", "shmem"):
                totals[key] += mem.get(key, 0)
            if kind == "driver":
                driver = mem["rss"]
            rec = self.per_pid.setdefault(proc.pid, {"kinds": {}, "peak_rss": 0, "peak_pss": 0, "peak_anon": 0,
                                                     "first_rss": mem["rss"], "first_t": time.perf_counter() - self.t0})
            rec["kinds"][kind] = rec["kinds"].get(kind, 0) + 1
            rec["peak_rss"] = max(rec["peak_rss"], mem["rss"])
            rec["peak_pss"] = max(rec["peak_pss"], mem.get("pss", 0))
            rec["peak_anon"] = max(rec["peak_anon"], mem.get("anon", 0))
            rec["last_rss"], rec["last_anon"], rec["last_t"] = mem["rss"], mem.get("anon", 0), time.perf_counter() - self.t0
        if kinds:
            self.samples.append(dict(t=time.perf_counter() - self.t0, driver_rss=driver, plasma=self.plasma_bytes(),
                                     store=self.store_accounting(), kinds=dict(kinds), kinds_anon=dict(kinds_anon),
                                     processes=live, **totals))

    def store_accounting(self) -> dict:
        """Ray's own object store figures from the raylet's debug_state.txt: bytes in use
        (object_store_memory total - available) and bytes spilled to disk."""
        if not self.session_dir:
            return {}
        try:
            with open(os.path.join(self.session_dir, "logs", "debug_state.txt")) as f:
                text = f.read()
        except OSError:
            return {}
        out = {}
        m = re.search(r'"total":\{[^}]*object_store_memory: \[(\d+)\].*?"available": \{[^}]*object_store_memory: \[(\d+)\]', text)
        if m:
            out["used"] = (int(m.group(1)) - int(m.group(2))) // 10000  # fixed point, 4 decimals
        m = re.search(r"num bytes currently spilled: (\d+)", text)
        if m:
            out["spilled"] = int(m.group(1))
        return out

    # ------------------------------------------------ summaries

    def peak(self, key: str) -> int:
        return max((s[key] for s in self.samples), default=0)

    def peak_sample(self, key: str = "rss") -> dict:
        return max(self.samples, key=lambda s: s[key]) if self.samples else {}

    def kind_peaks(self) -> dict[str, int]:
        """Per kind, the highest summed RSS of its processes in any one sample."""
        out = defaultdict(int)
        for s in self.samples:
            for kind, rss in s["kinds"].items():
                out[kind] = max(out[kind], rss)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def group_peaks(self) -> dict[str, int]:
        """Per group (worker_group), the highest summed RSS of its processes in any one sample."""
        out = defaultdict(int)
        for s in self.samples:
            groups = defaultdict(int)
            for kind, rss in s["kinds"].items():
                groups[worker_group(kind)] += rss
            for g, rss in groups.items():
                out[g] = max(out[g], rss)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def pids(self) -> list[dict]:
        """Every process seen: its most frequent kind, peak RSS/PSS/anon, and RSS first and last seen."""
        rows = []
        for pid, rec in self.per_pid.items():
            kind = max(rec["kinds"], key=rec["kinds"].get)
            rows.append(dict(pid=pid, kind=kind, kinds=sorted(rec["kinds"]), peak_rss=rec["peak_rss"],
                             peak_pss=rec["peak_pss"], peak_anon=rec["peak_anon"], first_rss=rec["first_rss"],
                             last_rss=rec.get("last_rss", 0), last_anon=rec.get("last_anon", 0), first_t=rec["first_t"],
                             last_t=rec.get("last_t", 0)))
        return sorted(rows, key=lambda r: -r["peak_rss"])

    def group_course(self, shares=(0.25, 0.5, 0.75, 0.95)) -> dict[str, list[int]]:
        """Each group's summed RSS at these shares of the run's duration: what keeps growing
        while rows flow, as opposed to what is reached at start and then flat."""
        if not self.samples:
            return {}
        end = self.samples[-1]["t"]
        picks = [min(self.samples, key=lambda s: abs(s["t"] - share * end)) for share in shares]
        groups = sorted({g for s in picks for g in _group(s["kinds"])})
        return {"shares": list(shares), **{g: [_group(s["kinds"]).get(g, 0) for s in picks] for g in groups}}

    def timeseries(self, every_s: float = 2.0) -> list[dict]:
        out, last = [], -every_s
        for s in self.samples:
            if s["t"] - last >= every_s:
                out.append(dict(t=round(s["t"], 1), rss=s["rss"], pss=s["pss"], anon=s["anon"], plasma=s["plasma"],
                                store=s["store"], kinds=s["kinds"], kinds_anon=s["kinds_anon"]))
                last = s["t"]
        return out


def _group(kinds: dict) -> dict:
    out = defaultdict(int)
    for kind, rss in kinds.items():
        out[worker_group(kind)] += rss
    return dict(out)


# ---------------------------------------------------------------- one run of the job


def config_field_path(name: str) -> str | None:
    """The dotted key of a TagConfig field named `name` (searching its sections), or None."""
    from offramp.config import TagConfig

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            if f.name == name:
                return prefix + f.name
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                found = walk(type(default), prefix + f.name + ".")
                if found:
                    return found
        return None

    return walk(TagConfig, "")


def job_command(corpus: str, model: str, out: str, work: str, rows_per_output_file: int, extra: list[str]) -> list[str]:
    """The real job, as a user runs it; max_rows_per_file only when the config has it."""
    cmd = [sys.executable, os.path.join(REPO, "jobs", "tag_corpus.py"), "--input", corpus, "--model", model,
           "--output", out, "--overwrite", "--text-column", "text", "--id-column", "id",
           "--set", f"mlflow.tracking_uri=sqlite:///{os.path.abspath(work)}/mlflow.db",
           "--set", "mlflow.experiment=offramp-bench-scale"]
    key = config_field_path("max_rows_per_file")
    if key and rows_per_output_file:
        cmd += ["--set", f"{key}={rows_per_output_file}"]
    return cmd + list(extra)


SUMMARY = re.compile(r"tagged (\d+) rows .*?; ([\d.]+) docs/s, mean layers ([\d.]+).*?(?:mlflow run (\w+))?$", re.MULTILINE)


def run_job(cmd: list[str], log_path: str, interval: float, pss_every: float, env_extra: dict | None = None,
            stop_after: float = 0) -> dict:
    """Run the job, sampling its processes; return exit status, wall time, the summary line's figures.
    `stop_after` > 0: terminate it after that many seconds (a partial run, to compare the first
    minutes of two settings)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        with RaySampler(proc.pid, interval, pss_every) as sampler:
            try:
                status = proc.wait(timeout=stop_after or None)
            except subprocess.TimeoutExpired:
                proc.terminate()  # the driver shuts its embedded Ray down
                status = proc.wait()
        wall = time.perf_counter() - t0
    with open(log_path, errors="replace") as f:
        text = f.read()
    found = SUMMARY.findall(text)
    result = dict(status=status, job_wall_s=wall, command=cmd, log=log_path)
    if found:
        rows, dps, layers, run_id = found[-1]
        result.update(rows_reported=int(rows), docs_per_s_printed=float(dps), mean_layers=float(layers), run_id=run_id)
    if status != 0 or not found:
        result["log_tail"] = text[-6000:]
        tracebacks = [m.start() for m in re.finditer(r"Traceback \(most recent call last\)", text)]
        result["first_traceback"] = text[tracebacks[0]: tracebacks[0] + 4000] if tracebacks else None
    return result, sampler


def mlflow_metrics(work: str, run_id: str) -> dict:
    """The run's metrics as logged (docs_per_second = rows / wall of the Ray Data write)."""
    try:
        import mlflow

        client = mlflow.tracking.MlflowClient(f"sqlite:///{os.path.abspath(work)}/mlflow.db")
        m = client.get_run(run_id).data.metrics
        return {k: m[k] for k in ("rows", "docs_per_second", "wall_seconds", "mean_layers", "rows_labeled",
                                  "rows_status_truncated", "tokens_per_second") if k in m}
    except Exception as e:  # noqa: BLE001  (a missing store must not lose the memory figures)
        return {"error": repr(e)}


def check_output(out: str) -> dict:
    """Files, sizes and rows of the written output, from the Parquet footers; distinct ids."""
    files = sorted(f for f in glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True)
                   if not any(part.startswith(("_", ".")) for part in os.path.relpath(f, out).split(os.sep)))  # not _checkpoint/
    sizes = [os.path.getsize(f) for f in files]
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    ids = pads.dataset(files, format="parquet").to_table(columns=["id"])["id"] if files else pa.chunked_array([], pa.string())
    statuses = pads.dataset(files, format="parquet").to_table(columns=["status"])["status"] if files else None
    manifest = {}
    if os.path.exists(os.path.join(out, "_manifest.json")):  # the job's own record, when it writes one
        with open(os.path.join(out, "_manifest.json")) as f:
            doc = json.load(f)
        manifest = {k: doc.get(k) for k in ("complete", "rows_in", "files_in", "rows_out", "rows_by_status")}
    return dict(files=len(files), rows=sum(rows), job_manifest=manifest, distinct_ids=int(pc.count_distinct(ids).as_py()) if files else 0,
                min_file_bytes=min(sizes, default=0), max_file_bytes=max(sizes, default=0), total_bytes=sum(sizes),
                min_file_rows=min(rows, default=0), max_file_rows=max(rows, default=0),
                status_counts={d["values"]: d["counts"] for d in pc.value_counts(statuses).to_pylist()} if files else {})


def measure(rows: int, args, gz_every: int) -> dict:
    """One size: corpus (cached), job under the sampler, output check; a dict for scale.json."""
    corpus = os.path.join(args.work, "corpus", f"{rows}_{'gz' if gz_every else 'plain'}")
    t0 = time.perf_counter()
    manifest = generate_corpus(rows, corpus, args.rows_per_file, args.seed, gz_every)
    print(f"[{rows}] corpus {corpus}: {manifest['files']} files ({manifest['gz_files']} gzipped), "
          f"{manifest['bytes'] / MiB:.0f} MiB, ready in {time.perf_counter() - t0:.0f} s", flush=True)
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    tag = "_".join(f"{k}={v}" for k, v in env_extra.items()) + (f"_stop{args.stop_after:g}" if args.stop_after else "")
    name = f"{rows}_{tag}" if tag else str(rows)  # a variant never overwrites the plain run's output or log
    out = os.path.join(args.work, "out", name)
    os.makedirs(os.path.join(args.work, "logs"), exist_ok=True)
    cmd = job_command(corpus, args.model_dir, out, args.work, args.rows_per_output_file, args.job_args)
    print(f"[{rows}] running: {' '.join(cmd)}", flush=True)
    job, sampler = run_job(cmd, os.path.join(args.work, "logs", f"job_{name}.log"), args.interval, args.pss_every,
                           env_extra, args.stop_after)
    job.update(env=env_extra, stopped_after_s=args.stop_after or None)
    print(f"[{rows}] job exit {job['status']} in {job['job_wall_s']:.0f} s", flush=True)
    if job.get("run_id"):
        job["mlflow"] = mlflow_metrics(args.work, job["run_id"])
    output = check_output(out) if os.path.isdir(out) and job["status"] == 0 else None
    peak = sampler.peak_sample("rss")
    pss_peak = sampler.peak_sample("pss")
    store = [s["store"] for s in sampler.samples if s["store"]]
    result = dict(
        rows=rows, corpus=dict(path=corpus, **manifest), job=job, output=output,
        rows_in_equals_rows_out=bool(output and output["rows"] == rows and output["distinct_ids"] == rows),
        docs_per_s=(job.get("mlflow") or {}).get("docs_per_second", job.get("docs_per_s_printed")),
        peak_driver_rss=sampler.peak("driver_rss"),
        peak_ray_rss_sum=sampler.peak("rss"), peak_ray_pss_sum=sampler.peak("pss"), peak_ray_anon_sum=sampler.peak("anon"),
        peak_plasma_pages=sampler.peak("plasma"), plasma_capacity=sampler.plasma_capacity,
        peak_store_used=max((s.get("used", 0) for s in store), default=None),
        peak_store_spilled=max((s.get("spilled", 0) for s in store), default=None),
        at_rss_peak=dict(t=peak.get("t"), rss=peak.get("rss"), pss=peak.get("pss"), anon=peak.get("anon"),
                         file=peak.get("file"), shmem=peak.get("shmem"), plasma=peak.get("plasma"),
                         by_kind=dict(sorted(peak.get("kinds", {}).items(), key=lambda kv: -kv[1])),
                         by_group=_group(peak.get("kinds", {}))),
        at_pss_peak=dict(t=pss_peak.get("t"), pss=pss_peak.get("pss"), rss=pss_peak.get("rss")),
        kind_peaks=sampler.kind_peaks(), group_peaks=sampler.group_peaks(), group_course=sampler.group_course(),
        processes=sampler.pids(), processes_at_rss_peak=peak.get("processes"),
        samples=len(sampler.samples), object_store_fraction=store_fraction(args.job_args),
    )
    # gzipped: a 5M-row run's samples are 2.2 MiB of JSON
    series = os.path.join(os.path.dirname(args.out), f"{os.path.basename(args.out)[:-5]}_timeseries_{rows}.json.gz")
    with gzip.open(series, "wt") as f:
        json.dump(dict(rows=rows, interval_s=args.interval, series=sampler.timeseries()), f)
    return result


# ---------------------------------------------------------------- report


def store_fraction(job_args: list[str]) -> float:
    """The share of the object store the job's Ray Data may fill: its `ray.object_store_fraction`."""
    fraction = RayConfig().object_store_fraction
    for arg in job_args:
        if arg.startswith("ray.object_store_fraction="):
            fraction = float(arg.split("=", 1)[1])
    return fraction


def projection(results: list[dict], target: int = 10_000_000) -> dict | None:
    """What `target` rows would need, from the measured runs (estimates, said how):
    - time: the largest run's rate (its docs/s) plus its fixed cost (job wall minus pipeline wall);
      a line through two runs' walls would carry their different machine loads into the slope;
    - memory, a straight line through the two largest runs (peak driver RSS, summed RSS, summed PSS,
      object store pages);
    - memory, capped: the part that grows is the tokenized backlog in the object store, and Ray Data
      stops reading ahead once its object store budget (the run's `ray.object_store_fraction` of the
      store, 0.1 by default; runs before that setting: Ray's RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION,
      default 0.5) is full; past that many rows it stays there. The summed RSS counts
      each backlog page several times (shared memory / physical pages, measured at the peak)."""
    ok = sorted((r for r in results if r["job"]["status"] == 0 and r["docs_per_s"]), key=lambda r: r["rows"])
    if not ok:
        return None
    b = ok[-1]
    pipeline_s = b["rows"] / b["docs_per_s"]
    out = {"rows": target, "rate_from_rows": b["rows"], "docs_per_s": b["docs_per_s"],
           "job_wall_s": b["job"]["job_wall_s"] - pipeline_s + target / b["docs_per_s"]}
    if len(ok) >= 2:
        a = ok[-2]
        out["line_from_rows"] = [a["rows"], b["rows"]]
        for key in ("peak_driver_rss", "peak_ray_rss_sum", "peak_ray_pss_sum", "peak_plasma_pages"):
            slope = (b[key] - a[key]) / (b["rows"] - a["rows"])
            out[key] = b[key] + slope * (target - b["rows"])
            out[key + "_per_million_rows"] = slope * 1e6
    fraction = b.get("object_store_fraction") or float(  # runs before offramp set it: Ray's own knob and default
        b["job"].get("env", {}).get("RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION", 0.5))
    if b.get("plasma_capacity") and b["peak_plasma_pages"]:
        budget = fraction * b["plasma_capacity"]
        per_row = b["peak_plasma_pages"] / b["rows"]
        grow = max(0.0, min(budget, per_row * target) - b["peak_plasma_pages"])
        counted = (b["at_rss_peak"]["shmem"] or 0) / max(b["at_rss_peak"]["plasma"] or 1, 1)
        out["capped"] = dict(budget_bytes=budget, backlog_bytes_per_row=per_row, rows_to_fill_budget=budget / per_row,
                             plasma_pages=b["peak_plasma_pages"] + grow, pss_sum=b["peak_ray_pss_sum"] + grow,
                             shmem_counted_per_physical_page=counted, rss_sum=b["peak_ray_rss_sum"] + counted * grow)
    return out


def gib(x) -> str:
    return "–" if x is None else f"{x / GiB:.2f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def results_table(results: list[dict]) -> list[str]:
    """One line per size: speed, memory peaks, output files, rows in = rows out."""
    rows = []
    for r in results:
        o, c = r["output"], r["corpus"]
        if o:
            sizes = f"{o['min_file_bytes'] / MiB:.2f} / {o['max_file_bytes'] / MiB:.2f} / {o['total_bytes'] / MiB:.1f}"
            same = f"yes ({o['rows']:,})" if r["rows_in_equals_rows_out"] else f"NO ({o['rows']:,} rows, {o['distinct_ids']:,} ids)"
        else:
            sizes, same = "–", f"job exit {r['job']['status']}"
        rows.append([f"{r['rows']:,}", f"{c['files']} ({c['gz_files']})", f"{r['job']['job_wall_s']:.0f}",
                     f"{r['docs_per_s']:.0f}" if r["docs_per_s"] else "–", gib(r["peak_driver_rss"]), gib(r["peak_ray_rss_sum"]),
                     gib(r["peak_ray_pss_sum"]), f"{gib(r['peak_plasma_pages'])} / {gib(r['peak_store_used'])}",
                     o["files"] if o else "–", sizes, same])
    return table(["rows", "input files (gz)", "job wall s", "docs/s", "peak driver RSS GiB", "peak Ray RSS sum GiB",
                  "peak Ray PSS sum GiB", "object store peak GiB (pages / Ray used)", "output files",
                  "output file MiB min / max / total", "rows out = in"], rows)


def composition_table(results: list[dict]) -> list[str]:
    """What the summed RSS is made of at its peak."""
    intro = ("What the summed RSS is made of at its peak (GiB): anonymous memory is each process's own; file-backed "
             "pages (torch and other libraries) and shared-memory pages (the object store's, in every process that "
             "wrote or read them) are counted once per process that maps them. PSS splits shared pages among their "
             "users; the object store's physical pages are counted once.")
    rows = [[f"{r['rows']:,}", r.get("processes_at_rss_peak", "–"), *(gib(r["at_rss_peak"][k]) for k in
             ("rss", "anon", "file", "shmem", "plasma", "pss"))] for r in results]
    return [intro, ""] + table(["rows", "processes", "RSS sum", "anonymous", "file-backed",
                                "shared memory (object store pages, per process)", "object store pages, physical",
                                "PSS sum (same moment)"], rows)


GROUP_NAMES = {"python": "forked, not yet exec'd (a copy of its parent, at start)"}


def group_table(results: list[dict]) -> list[str]:
    """Each process group's own peak, and its share of the summed-RSS peak."""
    groups = sorted({g for r in results for g in r["group_peaks"]},
                    key=lambda g: -max(r["group_peaks"].get(g, 0) for r in results))
    rows = [[GROUP_NAMES.get(g, g), *(f"{gib(r['group_peaks'].get(g))} ({gib(r['at_rss_peak']['by_group'].get(g, 0))})"
                                      for r in results)] for g in groups]
    intro = ("Peak RSS by process group (GiB; each group's own peak over the run; at the moment of the summed-RSS "
             "peak in brackets):")
    return [intro, ""] + table(["group", *(f"{r['rows']:,}" for r in results)], rows)


def projection_text(proj: dict) -> str:
    """The 10M estimate in words (see `projection` for how each figure is made)."""
    text = (f"Projected to {proj['rows']:,} rows: job wall {proj['job_wall_s'] / 3600:.1f} h at the "
            f"{proj['rate_from_rows']:,}-row run's {proj['docs_per_s']:.0f} docs/s.")
    if "line_from_rows" in proj:
        per_m = {k: proj[k + "_per_million_rows"] / MiB for k in ("peak_driver_rss", "peak_ray_rss_sum", "peak_ray_pss_sum")}
        text += (f" A straight line through {proj['line_from_rows'][0]:,} and {proj['line_from_rows'][1]:,} rows: "
                 f"peak driver RSS {gib(proj['peak_driver_rss'])} GiB ({per_m['peak_driver_rss']:+.0f} MiB per million rows), "
                 f"summed RSS {gib(proj['peak_ray_rss_sum'])} GiB ({per_m['peak_ray_rss_sum']:+.0f} MiB/M), "
                 f"summed PSS {gib(proj['peak_ray_pss_sum'])} GiB ({per_m['peak_ray_pss_sum']:+.0f} MiB/M), "
                 f"object store pages {gib(proj['peak_plasma_pages'])} GiB.")
    c = proj.get("capped")
    if c:
        text += (f" With Ray Data's object store budget ({gib(c['budget_bytes'])} GiB here) capping the tokenized "
                 f"backlog ({c['backlog_bytes_per_row']:.0f} B per row, full at {c['rows_to_fill_budget'] / 1e6:.1f}M rows): "
                 f"object store pages {gib(c['plasma_pages'])} GiB, summed PSS {gib(c['pss_sum'])} GiB, summed RSS "
                 f"{gib(c['rss_sum'])} GiB (each backlog page counted {c['shmem_counted_per_physical_page']:.1f} times).")
    return text


def markdown(results: list[dict], proj: dict | None, command: str) -> str:
    """scale.md: the command, the results, the RSS composition, the groups, the 10M estimate."""
    lines = [f"Command: `{command}`", "", *results_table(results), "", *composition_table(results), "",
             *group_table(results)]
    if proj:
        lines += ["", projection_text(proj)]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--work", default="/tmp/offramp_scale", help="corpus cache, model, outputs, logs, MLflow store")
    p.add_argument("--rows-per-file", type=int, default=50_000, help="input rows per JSONL file")
    p.add_argument("--gzip-every", type=int, default=4, help="every N-th input file gzipped, if the reader takes .jsonl.gz (0: none)")
    p.add_argument("--rows-per-output-file", type=int, default=100_000, help="max_rows_per_file, when the config has it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.5, help="RSS sampling period, seconds")
    p.add_argument("--pss-every", type=float, default=5.0, help="PSS (smaps_rollup, costly) read period, seconds")
    p.add_argument("--out", default=os.path.join(RESULTS, "scale.json"))
    p.add_argument("--no-keep", dest="keep", action="store_false", help="drop the sizes --out holds from earlier runs")
    p.add_argument("job_args", nargs="*", help="after --: extra arguments for jobs/tag_corpus.py (e.g. --set ray.num_cpus=4)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the job, e.g. RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION=0.05 (repeatable)")
    p.add_argument("--stop-after", type=float, default=0, help="terminate the job after this many seconds (a partial run)")
    p.add_argument("--render-only", action="store_true", help="rewrite scale.md from --out's JSON; run nothing")
    args = p.parse_args()
    if args.render_only:
        with open(args.out) as f:
            doc = json.load(f)
        doc["projection_10m"] = projection(doc["results"])
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        with open(args.out[:-5] + ".md", "w") as f:
            f.write(markdown(doc["results"], doc["projection_10m"], doc["command"]))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    gz = gzip_supported()
    gz_every = args.gzip_every if gz else 0
    print(f"reader takes .jsonl.gz: {gz}; max_rows_per_file config key: {config_field_path('max_rows_per_file')}", flush=True)
    texts, labels = load_pool()
    args.model_dir = build_tiny_model(os.path.join(args.work, "model"), texts[:: len(texts) // 1000][:1000], sorted(set(labels)))
    del texts, labels
    results = earlier_results(args.out) if args.keep else {}
    for rows in args.sizes:
        results[rows] = measure(rows, args, gz_every)
        results[rows]["measured"] = dict(at=time.strftime("%Y-%m-%d %H:%M:%S"), tree=git_state(), load_avg=os.getloadavg())
        save([results[k] for k in sorted(results)], args, gz)  # after every size: a long run that dies keeps what it measured
    with open(args.out[:-5] + ".md") as f:
        print(f.read())


def earlier_results(path: str) -> dict[int, dict]:
    """Sizes measured by earlier invocations (kept unless measured again: `--sizes 5000000` adds a row)."""
    try:
        with open(path) as f:
            return {r["rows"]: r for r in json.load(f)["results"]}
    except (OSError, ValueError, KeyError):
        return {}


def git_state() -> str:
    """The commit measured, and whether the working tree had changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True,
                               check=False).stdout
        return head + (" + uncommitted changes" if dirty.strip() else "")
    except OSError:
        return "unknown"


def shown_path(path: str) -> str:
    """A path as the command line in scale.md shows it: relative inside the repository."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def save(results: list[dict], args, gz: bool) -> None:
    command = "python benchmarks/bench_scale.py --sizes " + " ".join(str(r["rows"]) for r in results) + \
        ("" if args.work == "/tmp/offramp_scale" else f" --work {args.work}") + \
        "".join(f" --env {e}" for e in args.env) + (f" --stop-after {args.stop_after:g}" if args.stop_after else "") + \
        ("" if args.out == os.path.join(RESULTS, "scale.json") else f" --out {shown_path(args.out)}") + \
        (" -- " + " ".join(args.job_args) if args.job_args else "")
    proj = projection(results)
    doc = dict(command=command, reader_takes_gzip=gz, max_rows_per_file_key=config_field_path("max_rows_per_file"),
               cpu_count=os.cpu_count(), memory_bytes=psutil.virtual_memory().total, results=results, projection_10m=proj)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    with open(args.out[:-5] + ".md", "w") as f:
        f.write(markdown(results, proj, command))


if __name__ == "__main__":
    main()
