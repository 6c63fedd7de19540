"""The shipped tagging configurations load, and the GPU one has the layout measured fastest."""

from pathlib import Path

import pytest

from offramp.config import TagConfig, load_config

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", [REPO / "conf" / n for n in ("demo.yaml", "tag_gpu_cluster.yaml")], ids=lambda p: p.name)
def test_each_shipped_tag_config_loads(path):
    load_config(TagConfig, str(path))


def test_the_gpu_config_shares_each_gpu_between_two_actors_of_one_stage():
    """On the H200, one stage with two actors at 0.5 GPU measured fastest and a pool per stage
    slowest (BENCHMARKS.md, "GPU"; offramp.planning.capacity.GPU_LAYOUTS_MEASURED)."""
    cfg = load_config(TagConfig, str(REPO / "conf" / "tag_gpu_cluster.yaml"))
    (stage,) = cfg.stages
    assert stage.num_gpus == 0.5 and stage.min_actors >= 2 and stage.layers is None
    assert cfg.dtype == "float16" and cfg.rebatch == 0
