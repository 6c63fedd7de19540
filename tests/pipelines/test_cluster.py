"""Where a run's files must live on a multi-node cluster: what a node reports and the error it
makes, without Ray (on one machine every node sees everything; the real probe runs on a
multi-node cluster in test_multinode.py)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from offramp.config import ConfigError, TagConfig
from pipelines.cluster import (
    Expected,
    check_paths_on_nodes,
    expected_paths,
    nearest_dir,
    path_problems,
    probe_paths,
)


@pytest.fixture
def files(tmp_path):
    """A model directory, an input directory and an output's parent, as the driver sees them."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 4}')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"id": 1, "text": "x"}\n')
    (corpus / "b.jsonl").write_text('{"id": 2, "text": "yy"}\n')
    shared = tmp_path / "shared"
    shared.mkdir()
    return TagConfig(model=str(model), input=str(corpus), output=str(shared / "runs" / "out"))


def with_marker(expected: Expected) -> Expected:
    (open(os.path.join(expected.output_dir, ".offramp-probe-driver"), "w")).close()
    return dataclasses.replace(expected, marker=".offramp-probe-driver")


def test_the_driver_notes_local_paths_only_and_probes_the_outputs_nearest_existing_directory(files, tmp_path):
    e = expected_paths(files)
    assert e.model == files.model and len(e.model_digest) == 64
    assert e.input == files.input and e.input_size == (2, 23 + 24)
    assert e.output_dir == str(tmp_path / "shared")  # runs/out does not exist yet: Ray creates it
    assert nearest_dir(str(tmp_path / "shared")) == str(tmp_path / "shared")
    # an object store (mock:// here: s3://, gs://) is the same for every node; file:// is a local path
    e = expected_paths(dataclasses.replace(files, input="file://" + files.input, output="mock:///bucket/out"))
    assert e.input == files.input and e.output_dir is None and set(e.given) == {"model", "input"}


def test_a_node_that_sees_the_same_files_reports_nothing(files):
    assert probe_paths(with_marker(expected_paths(files))) == {}
    assert not [n for n in os.listdir(expected_paths(files).output_dir) if n.startswith(".offramp-probe-") and n != ".offramp-probe-driver"]


def test_a_node_reports_what_it_cannot_see_or_sees_differently(files, tmp_path):
    e = with_marker(expected_paths(files))
    gone = dataclasses.replace(e, model=str(tmp_path / "elsewhere"), input=str(tmp_path / "nope"), output_dir=str(tmp_path / "no"))
    p = probe_paths(gone)
    assert p["model"] == f"cannot read {tmp_path}/elsewhere/config.json"
    assert p["input"] == f"cannot see {tmp_path}/nope" and p["output"] == f"cannot see {tmp_path}/no"
    # the same paths on the node's own disk: a stale model copy, a partial corpus, another output disk
    other = dataclasses.replace(e, model_digest="0" * 64, input_size=(3, 47), marker=".offramp-probe-not-here")
    p = probe_paths(other)
    assert "another" in p["model"] and "a different copy of the model" in p["model"]
    assert "2 files, 47 bytes there; 3 files, 47 bytes on the driver" in p["input"]
    assert "does not see the file the driver wrote" in p["output"] and "another disk" in p["output"]


def test_a_node_that_cannot_write_in_the_outputs_directory_says_so(files):
    e = dataclasses.replace(expected_paths(files), output_dir="/proc/self", marker="")  # not writable, even by root
    assert probe_paths(e)["output"].startswith("cannot write in /proc/self (")


def test_the_error_names_each_path_the_nodes_that_fail_it_and_the_fix(files):
    e = expected_paths(files)
    reports = {
        "aaaaaaaa (10.0.0.1)": {},
        "bbbbbbbb (10.0.0.2)": {"output": "does not see the file the driver wrote in /x: it writes to another disk",
                                "model": "cannot read /m/config.json"},
        "cccccccc (10.0.0.3)": {"model": "cannot read /m/config.json"},
    }
    message = path_problems(e, reports)
    assert message.startswith("on this 3-node Ray cluster every node must see the run's files")
    model, output = message.index(f"model {files.model}:"), message.index(f"output {files.output}:")
    assert model < output and f"input {files.input}" not in message
    assert message.count("node bbbbbbbb (10.0.0.2)") == 2 and "node cccccccc (10.0.0.3)" in message
    assert "aaaaaaaa" not in message
    fixes = [line for line in message.splitlines() if "fix:" in line]
    assert len(fixes) == 2 and all("every node mounts at the same path (NFS" in f for f in fixes)
    assert "copy it to that same path on every node" in fixes[0] and "s3://" not in fixes[0]  # the model: files only
    assert "set mlflow.model_cache to such a path" in fixes[0]  # a models:/ model: where its cache must be
    assert "object-store URI (s3://" in fixes[1]
    assert path_problems(e, {"aaaaaaaa (10.0.0.1)": {}, "bbbbbbbb (10.0.0.2)": {}}) is None


def test_one_node_checks_nothing(files, monkeypatch):
    monkeypatch.setattr("pipelines.cluster.alive_nodes", lambda: {"n1": "n1 (10.0.0.1)"})
    check_paths_on_nodes(dataclasses.replace(files, model="/nowhere"))  # not even the driver's view is read


def test_a_failing_node_fails_the_run_at_start_and_leaves_no_marker(files, monkeypatch):
    monkeypatch.setattr("pipelines.cluster.alive_nodes", lambda: {"n1": "n1 (10.0.0.1)", "n2": "n2 (10.0.0.2)"})
    seen = {}

    def reports(expected, nodes):
        seen["marker"] = os.path.join(expected.output_dir, expected.marker)
        assert os.path.exists(seen["marker"])  # the nodes look for the driver's file while they are asked
        return {"n1 (10.0.0.1)": probe_paths(expected), "n2 (10.0.0.2)": {"input": f"cannot see {files.input}"}}

    monkeypatch.setattr("pipelines.cluster.node_reports", reports)
    with pytest.raises(ConfigError, match=r"(?s)input .*node n2 \(10.0.0.2\): cannot see .*fix: put it on a filesystem"):
        check_paths_on_nodes(files)
    assert not os.path.exists(seen["marker"])
