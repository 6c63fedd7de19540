"""Where a run's files must live when Ray runs on more than one node (issue 14, #6).

Every node may run any step, so every node must see the same files:

- the model directory: read by every stage actor and every tokenize task. A plain path on a
  filesystem every node mounts at the same path (NFS, EFS, a cluster's shared disk such as
  /mnt/cluster_storage), or a copy at the same path on every node. It is read with plain file
  calls, so no object-store URI.
- the input: read by read tasks on any node. A path on such a shared filesystem, or an
  object-store URI (s3://, gs://, ...; `pipelines.storage`).
- the output: written by write tasks on any node, then read back by the driver for the run's
  metrics, so one storage every node writes to: a shared filesystem or an object-store URI. A
  directory of the same name on each node's own disk would scatter the output over the nodes.

Ray Data's `local://` paths (read or write on the driver's node only) are not accepted: Ray
deprecates them, and they would put every read or write on one node.

`check_paths_on_nodes` runs at the start of a run on a multi-node cluster: one tiny task pinned to
each alive node checks what that node sees (`probe_paths`), and `path_problems` turns the nodes'
answers into the error, or None. The two are apart so the failing branch is tested without a
second machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field

import ray
import ray.cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from offramp.config import ConfigError, TagConfig
from pipelines.storage import filesystem, is_local

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0  # a node that does not answer by then is reported in the log, not failed
MARKER_PREFIX = ".offramp-probe-"  # a dot file: Parquet readers skip it

FIX = (
    "put it on a filesystem every node mounts at the same path (NFS, EFS, the cluster's shared disk such as "
    "/mnt/cluster_storage){alt}"
)
ALTERNATIVE = {
    "model": ", or copy it to that same path on every node (a models:/ model: set mlflow.model_cache to such a path)",
    "input": ", or give an object-store URI (s3://bucket/..., gs://...)",
    "output": ", or give an object-store URI (s3://bucket/..., gs://...)",
}


@dataclass(frozen=True)
class Expected:
    """What every node must see, as the driver sees it. A field is None when its path is not a
    plain local path (an object-store URI is the same for every node) and so is not probed."""

    model: str | None = None  # the model directory, absolute
    model_digest: str = ""  # sha256 of its config.json on the driver: a stale copy on a node differs
    input: str | None = None  # the input file or directory, absolute
    input_size: tuple[int, int] = (0, 0)  # (files, bytes) of the input on the driver
    output_dir: str | None = None  # the output directory, or its nearest existing ancestor
    marker: str = ""  # a file the driver wrote in output_dir: a node that sees it sees the same disk
    given: dict = field(default_factory=dict)  # role -> the path as the user gave it, for the message


# ---------------------------------------------------------------- on each node (plain Python, no Ray)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_size(path: str) -> tuple[int, int]:
    """(files, bytes) of a file or of every file under a directory."""
    if os.path.isfile(path):
        return 1, os.path.getsize(path)
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return files, size


def probe_paths(expected: Expected) -> dict[str, str]:
    """On one node: {role: what is wrong} for the model, input and output ({} = sees them all)."""
    problems = {}
    if expected.model is not None:
        config = os.path.join(expected.model, "config.json")
        if not os.path.isfile(config):
            problems["model"] = f"cannot read {config}"
        elif digest(config) != expected.model_digest:
            problems["model"] = f"sees another {config} than the driver (a different copy of the model)"
    if expected.input is not None:
        if not os.path.exists(expected.input):
            problems["input"] = f"cannot see {expected.input}"
        else:
            files, size = tree_size(expected.input)
            if (files, size) != expected.input_size:
                problems["input"] = (
                    f"sees another {expected.input} than the driver ({files} files, {size} bytes there; "
                    f"{expected.input_size[0]} files, {expected.input_size[1]} bytes on the driver)"
                )
    if expected.output_dir is not None:
        problems.update(probe_output(expected.output_dir, expected.marker))
    return problems


def probe_output(directory: str, marker: str) -> dict[str, str]:
    if not os.path.isdir(directory):
        return {"output": f"cannot see {directory}"}
    if marker and not os.path.exists(os.path.join(directory, marker)):
        return {"output": f"does not see the file the driver wrote in {directory}: it writes to another disk"}
    mine = os.path.join(directory, f"{MARKER_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(mine, "w") as f:
            f.write("offramp")
        os.remove(mine)
    except OSError as e:
        return {"output": f"cannot write in {directory} ({e.strerror or e})"}
    return {}


# ---------------------------------------------------------------- the decision (pure)


def path_problems(expected: Expected, reports: dict[str, dict[str, str]]) -> str | None:
    """The error for the nodes' answers ({node: {role: problem}}), or None when every node sees
    every path. Names each path, the nodes that fail it and the fix."""
    roles = [r for r in ("model", "input", "output") if any(r in p for p in reports.values())]
    if not roles:
        return None
    lines = [f"on this {len(reports)}-node Ray cluster every node must see the run's files, and some do not:"]
    for role in roles:
        given = expected.given.get(role, "")
        lines.append(f"  {role} {given}:")
        lines += [f"    node {node}: {p[role]}" for node, p in sorted(reports.items()) if role in p]
        lines.append("    fix: " + FIX.format(alt=ALTERNATIVE[role]))
    return "\n".join(lines)


# ---------------------------------------------------------------- on the driver


def nearest_dir(path: str) -> str:
    """`path` if it is a directory, else its nearest existing ancestor."""
    path = os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def expected_paths(cfg: TagConfig) -> Expected:
    """What the driver sees of the run's plain local paths (URIs are left out: every node reaches
    an object store the same way). Writes no marker yet."""
    given, model, model_digest, inp, size, out = {}, None, "", None, (0, 0), None
    if cfg.model and is_local(cfg.model):
        model = filesystem(cfg.model)[1]
        model_digest, given["model"] = digest(os.path.join(model, "config.json")), cfg.model
    if cfg.input and is_local(cfg.input):
        inp = filesystem(cfg.input)[1]
        size, given["input"] = tree_size(inp), cfg.input
    if cfg.output and is_local(cfg.output):
        out, given["output"] = nearest_dir(filesystem(cfg.output)[1]), cfg.output
    return Expected(model, model_digest, inp, size, out, "", given)


def alive_nodes() -> dict[str, str]:
    """{node id: "id[:8] (ip)"} of the cluster's alive nodes."""
    return {n["NodeID"]: f"{n['NodeID'][:8]} ({n.get('NodeManagerAddress', '?')})" for n in ray.nodes() if n["Alive"]}


def node_reports(expected: Expected, nodes: dict[str, str]) -> dict[str, dict[str, str]]:
    """Run `probe_paths` once on each node (a task pinned to it, no CPU reserved): {node label:
    problems}. A node that does not answer in PROBE_TIMEOUT_S, or dies meanwhile, is logged and left out."""
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_paths)
    # Sent by value: a worker that unpickled it by reference would import the `pipelines` package,
    # and with it torch, only to look at three paths (seconds per node, all nodes at once).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        refs = {
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(expected): label
            for node_id, label in nodes.items()
        }
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    reports = {}
    for ref in done:
        try:
            reports[refs[ref]] = ray.get(ref)
        except ray.exceptions.RayError as e:
            logger.warning("could not check the run's paths on node %s: %s", refs[ref], e)
    for ref in pending:
        logger.warning("node %s did not answer the path check in %.0f s; not checked", refs[ref], PROBE_TIMEOUT_S)
        ray.cancel(ref)
    return reports


def check_paths_on_nodes(cfg: TagConfig) -> None:
    """On a Ray cluster of more than one alive node, check that every node sees the model
    directory (its config.json, the same as the driver's), the input (the same number of files and
    bytes) and the output's directory (the file the driver wrote there, and can write in it), for
    each of them that is a plain local path; raise ConfigError naming the nodes, the paths and the
    fix. On one node (a laptop, an embedded Ray) there is nothing to check."""
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    expected = expected_paths(cfg)
    if not expected.given:
        return
    marker = None
    if expected.output_dir is not None:
        marker = os.path.join(expected.output_dir, f"{MARKER_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(marker, "w") as f:
                f.write("offramp")
        except OSError as e:
            raise ConfigError(
                f"output {cfg.output}: the driver cannot write in {expected.output_dir} ({e.strerror or e}); "
                "choose an --output on storage it can write"
            ) from e
        expected = dataclasses.replace(expected, marker=os.path.basename(marker))
    try:
        reports = node_reports(expected, nodes)
    finally:
        if marker is not None:
            os.remove(marker)
    message = path_problems(expected, reports)
    if message:
        raise ConfigError(message)
    logger.info("each of the %d nodes sees the run's local paths (%s)", len(reports), ", ".join(expected.given))
