"""Validate cluster.yaml against the schema Ray itself uses for `ray up`.

Two layers, both offline (no cloud credentials, no Ray cluster):
  * the raw file against ``ray/autoscaler/ray-schema.json`` (shipped in the
    installed ray package) with jsonschema, so unknown or mistyped keys written
    by hand are caught before Ray's defaults are merged in;
  * the same path `ray up` takes before touching AWS:
    ``prepare_config`` (merge with aws/defaults.yaml) then
    ``ray.autoscaler._private.util.validate_config`` (schema + Ray's own checks
    on head_node_type / min_workers / max_workers).
"""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).resolve().parent / "ray-schema.json"


def _load_config() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def _validate(config: dict) -> None:
    """Raise if Ray would reject ``config``."""
    with open(RAY_SCHEMA) as f:
        schema = json.load(f)
    jsonschema.validate(config, schema)
    # prepare_config mutates and deep-copies parts; give it its own copy.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_ray_config():
    config = _load_config()
    _validate(config)

    assert config["cluster_name"] == "offramp"
    assert config["provider"]["type"] == "aws"

    node_types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in node_types
    assert node_types[head]["resources"].get("GPU", 0) == 0, "head node should be CPU-only"

    gpu_types = [name for name, nt in node_types.items() if nt["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no node type declares GPU in its resources"
    assert all(name != head for name in gpu_types)
    assert all(node_types[name].get("max_workers", config["max_workers"]) > 0 for name in gpu_types)


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c.__setitem__("max_workers", "lots"), id="max_workers-not-int"),
        pytest.param(lambda c: c.__setitem__("num_gpus_total", 8), id="unknown-top-level-key"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_worker"]["resources"].__setitem__("GPU", "one"),
            id="gpu-count-not-int",
        ),
        pytest.param(lambda c: c.__setitem__("head_node_type", "no_such_type"), id="head-type-missing"),
    ],
)
def test_broken_config_is_rejected(breakage):
    config = _load_config()
    _validate(copy.deepcopy(config))  # sanity: the unbroken copy passes

    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validate(broken)
