"""The output directory of a run: started, checkpointed, resumed, and certified by a manifest.

    <output>/*.parquet        the rows (one per input row)
    <output>/_started.json    what the run was started with (config and model digests, attempts)
    <output>/_checkpoint/     Ray Data checkpoints: the source_row of every row written so far
    <output>/_manifest.json   written last, only when every input row is in the output

Readers and schedulers trust an output only when `_manifest.json` is there (names starting
with `_` are skipped by pyarrow's and Ray's readers). A killed run leaves `_started.json` and
`_checkpoint/`; `--resume` continues it, refusing other settings or another model.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time

import pyarrow.dataset as pads
import pyarrow.fs as pafs
from ray.data.checkpoint import CheckpointConfig

from offramp import schema
from offramp.config import ConfigError, TagConfig
from pipelines.storage import filesystem

MANIFEST, STARTED, CHECKPOINT = "_manifest.json", "_started.json", "_checkpoint"
MANIFEST_FORMAT = "offramp-manifest/1"
SETTLE_LIMIT_S = 20.0  # how long a failed run waits for its last writes to land (settle)

# Settings that change how a run goes, not which rows it writes: a resumed run may change them.
HOW_NOT_WHAT = {"resume", "overwrite", "ray", "mlflow", "max_errored_blocks", "fail_on_error_rows",
                "full_depth_eval_rows", "plan_target_docs_per_hour", "min_rows_per_file", "max_rows_per_file",
                "tokenize_batch_size", "batch_size", "tokenize_concurrency", "tokenize_cpus", "rebatch", "stage_calls"}


def config_digest(cfg: TagConfig) -> tuple[str, dict]:
    """sha256 of the settings that decide the output rows, and those settings."""
    what = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in HOW_NOT_WHAT}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest(), what


def model_digest(model_dir: str) -> str:
    """sha256 over the model directory's files (names and bytes): which model wrote a row."""
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(model_dir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, model_dir).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    h.update(block)
    return h.hexdigest()


def _read_json(fs, path: str) -> dict | None:
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def _write_json(fs, path: str, doc: dict) -> None:
    """Whole or not at all: a local file is written beside and renamed; an object store's
    PUT only shows the object once it is complete."""
    data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode()
    tmp = path + ".tmp" if isinstance(fs, pafs.LocalFileSystem) else path
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if tmp != path:
        fs.move(tmp, path)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_resume(cfg: TagConfig) -> None:
    """Before Ray starts: --resume needs an unfinished run of the same settings in --output."""
    fs, root = filesystem(cfg.output)
    if _read_json(fs, f"{root}/{MANIFEST}") is not None:
        raise ConfigError(f"the run in {cfg.output} is complete (it has {MANIFEST}): nothing to resume; "
                          "choose another --output, or --overwrite to run it again")
    started = _read_json(fs, f"{root}/{STARTED}")
    if started is None:
        raise ConfigError(f"{cfg.output} holds no started run ({STARTED} is missing): drop --resume to start one")
    digest, what = config_digest(cfg)
    if started["config_digest"] != digest:
        changed = sorted(k for k in what if json.dumps(what[k], default=str) != json.dumps(started["config"].get(k), default=str))
        raise ConfigError(f"the run in {cfg.output} was started with other settings ({', '.join(changed)} differ): "
                          "resume with the same settings, or start over with --overwrite")


def start(cfg: TagConfig, model_digest_: str) -> dict:
    """Prepare the output directory (empty it with --overwrite) and record the attempt."""
    fs, root = filesystem(cfg.output)
    digest, what = config_digest(cfg)
    if cfg.resume:
        started = _read_json(fs, f"{root}/{STARTED}")
        if started["model_digest"] != model_digest_:
            raise ConfigError(f"the run in {cfg.output} was started with another model (its files changed): "
                              "resume with that model, or start over with --overwrite")
        started["attempts"].append(now())
    else:
        if fs.get_file_info(root).type != pafs.FileType.NotFound:
            fs.delete_dir(root)  # --overwrite (check_output refused an existing output without it)
        fs.create_dir(root, recursive=True)
        started = {"config_digest": digest, "config": what, "model": cfg.model, "model_digest": model_digest_,
                   "input": cfg.input, "output": cfg.output, "attempts": [now()]}
    _write_json(fs, f"{root}/{STARTED}", started)
    return started


def checkpoint_config(cfg: TagConfig) -> CheckpointConfig:
    """Ray Data checkpoints of this output, keyed on source_row (unique per input row). Kept
    after a successful execution: the run deletes them once the manifest is written."""
    fs, root = filesystem(cfg.output)
    config = CheckpointConfig(schema.SOURCE_ROW, f"{root}/{CHECKPOINT}", override_filesystem=fs,
                              delete_checkpoint_on_success=False)
    config.checkpoint_actor_pool_max_size = 2  # a resume's filter actors (1 CPU each) leave the stages room
    return config


def rows_checkpointed(cfg: TagConfig) -> int:
    """Rows earlier attempts wrote and committed (0 for a fresh run): the committed
    checkpoint files hold one source_row each."""
    fs, root = filesystem(cfg.output)
    path = f"{root}/{CHECKPOINT}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return 0
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if f.is_file and f.path.endswith(".parquet") and not f.path.endswith(".pending.parquet")]
    return pads.dataset(files, format="parquet", filesystem=fs).count_rows() if files else 0


def settle(cfg: TagConfig, quiet_s: float = 1.0, limit_s: float = SETTLE_LIMIT_S) -> bool:
    """After a failed run, wait until its output stops changing; False when it still changed
    after `limit_s`. Ray Data cancels a failed run's tasks without waiting for them, so a write
    task already running may land a file, and commit its checkpoint, after the error reached the
    driver (seen in tests: 13 rows appeared 0.5 s later). A --resume in the same process would
    race it: its checkpoint filter could miss rows that then land twice. A store that cannot be
    listed (it may be why the run failed) gives False at once, so the run's own error is raised."""
    fs, root = filesystem(cfg.output)

    def listing():
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return sorted((f.path, f.size, f.mtime_ns) for f in found if f.is_file)

    deadline = time.monotonic() + limit_s
    try:
        last, since = listing(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(quiet_s / 5)
            now_ = listing()
            if now_ != last:
                last, since = now_, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return True
    except OSError:
        return False
    return False


def output_files(cfg: TagConfig) -> list[dict]:
    """The output's Parquet files with their rows (from the footers) and bytes."""
    fs, root = filesystem(cfg.output)
    files = []
    for fragment in pads.dataset(root, format="parquet", filesystem=fs).get_fragments():
        files.append({"path": os.path.relpath(fragment.path, root), "rows": fragment.metadata.num_rows,
                      "bytes": fs.get_file_info(fragment.path).size})
    return sorted(files, key=lambda f: f["path"])


def missing(files_in: dict[str, int], expected: list[str], rows_out: int) -> dict:
    """What keeps the output from being complete: input files never read to their end (a read
    block that errored), and rows read but not written (a later block that errored)."""
    unread = sorted(set(expected) - set(files_in))
    rows_in = sum(files_in.values())
    return {"files_unread": unread, "rows_missing": rows_in - rows_out if not unread else None}


def write_manifest(cfg: TagConfig, started: dict, result, run_id: str | None, tracking_uri: str | None) -> dict:
    """The manifest, written last: the output is complete and this is what it holds."""
    fs, root = filesystem(cfg.output)
    m = result.metrics
    files = output_files(cfg)
    doc = {
        "format": MANIFEST_FORMAT,
        "complete": True,
        "input": cfg.input,
        "output": cfg.output,
        "rows_in": result.rows_in,
        "files_in": result.files_in,
        "rows_out": m["rows"],
        "rows_by_status": {s: m.get(f"rows_status_{s}", 0) for s in schema.STATUSES},
        "output_files": files,
        "model": {"path": cfg.model, "digest": started["model_digest"], "policy": result.policy,
                  "thresholds": {str(k): v for k, v in result.thresholds.items()}, "calibration": result.calibration},
        "config_digest": started["config_digest"],
        "config": started["config"],
        "attempts": started["attempts"],
        "finished": now(),
        "mlflow": {"run_id": run_id, "tracking_uri": tracking_uri},
    }
    _write_json(fs, f"{root}/{MANIFEST}", doc)
    if fs.get_file_info(f"{root}/{CHECKPOINT}").type != pafs.FileType.NotFound:  # no longer needed
        fs.delete_dir(f"{root}/{CHECKPOINT}")
    return doc
