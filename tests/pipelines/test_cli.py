"""The `offramp` command (pipelines/cli.py) as a user meets it: --help lists every command and
setting; a configuration mistake exits 2 before any work, with the fix."""

from __future__ import annotations

import pytest

from pipelines import cli


def help_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_commands_and_each_command_its_settings(capsys):
    top = help_of(capsys)
    assert all(name in top for name in ("tag", "train", "calibrate", "plan", "serve"))
    tag = help_of(capsys, "tag")
    for flag in ("--input", "--exit.token.mode", "--exit-mode", "--no-exits", "--fail-on-error-rows",
                 "--audit.fail-below-target", "--ray.num-cpus", "--config", "--set"):
        assert flag in tag
    assert "Exit status 3" in tag and "(default: 0.01)" in tag  # the audit fraction's default
    train = help_of(capsys, "train")
    assert "--smartbert.sparsity-weight" in train and "--token.self-sampling-epochs" in train
    assert "--run-id" in help_of(capsys, "plan") and "--min-agreement" in help_of(capsys, "calibrate")
    served = help_of(capsys, "serve")
    assert all(flag in served for flag in ("--max-batch-tokens", "--max-texts-per-request", "--policy", "--no-exits"))


@pytest.mark.parametrize(
    "argv, fix",
    [
        (["tag", "--set", "exit.mode=sentence"], "did you mean 'exit.token.mode'"),
        (["train", "--set", "sparsity_weight=0.1"], "did you mean 'smartbert.sparsity_weight'"),
        (["train", "--mechanism", "smartbort"], "valid mechanisms: ['berxit'"),
        (["calibrate", "--model", "m", "--data", "d"], "state one target"),
        (["plan", "--run-id", "r"], "state one goal: --target-docs-per-hour"),
        (["plan", "--target-docs-per-hour", "1000"], "--run-id ID (MLflow) or --summary"),
        (["tag", "--config", "missing.yaml"], "pass an existing file to --config"),
        (["serve"], "model is not set; pass --model"),
        (["serve", "--model", "m", "--max-batch-tokens", "100"], "raise max_batch_tokens"),
        (["serve", "--model", "missing_model_dir"], "not a model directory"),
    ],
)
def test_a_configuration_mistake_exits_2_with_the_fix(capsys, argv, fix):
    assert cli.main(argv) == 2
    assert fix in capsys.readouterr().err
