"""The endpoint's settings: the example YAML loads, and a setting that cannot work fails with the fix."""

from pathlib import Path

import pytest

from offramp.config import ConfigError, ServeConfig, load_config

REPO = Path(__file__).resolve().parents[3]


def test_the_example_config_loads_and_the_defaults_are_valid():
    cfg = load_config(ServeConfig, str(REPO / "conf" / "serve.yaml"))
    assert cfg.max_batch_tokens == 4096 and cfg.max_length == 64 and cfg.exit.policy is None
    ServeConfig()


@pytest.mark.parametrize("settings, fix", [
    (dict(max_batch_tokens=100, max_length=128), "raise max_batch_tokens"),
    (dict(max_ongoing_requests=5), "raise max_ongoing_requests to at least 64"),
    (dict(num_replicas=2, max_replicas=4), "keep one"),
    (dict(min_replicas=3, max_replicas=2), "min_replicas <= max_replicas"),
    (dict(route_prefix="v1"), "must start with '/'"),
    (dict(port=0), "use 1..65535"),
    (dict(dtype="fp8"), "float32"),
    (dict(max_texts_per_request=0), "max_texts_per_request=0 must be >= 1"),
    (dict(batch_wait_timeout_s=-1.0), "must be >= 0"),
    (dict(max_length=4), "at least 8 tokens"),
])
def test_a_setting_that_cannot_work_fails_with_the_fix(settings, fix):
    with pytest.raises(ConfigError, match=fix):
        ServeConfig(**settings)


def test_exit_settings_take_the_tagging_flags_names():
    from offramp.config.serve import FLAG_ALIASES

    assert FLAG_ALIASES["exit.policy"] == "--policy" and FLAG_ALIASES["exit.disabled"] == ("--no-exits", True)
    assert not [k for k in FLAG_ALIASES if not k.startswith("exit.")]
