"""What pipelines/run.py refuses before Ray starts: each mistake fails at once, naming the fix."""

import pytest

from offramp.config import ConfigError, ExitConfig, TagConfig
from pipelines.run import validate


def config(tmp_path, corpus, model_dir, **kw) -> TagConfig:
    return TagConfig(input=corpus, model=model_dir, output=str(tmp_path / "out"), **kw)


def test_another_policy_needs_its_own_threshold(tmp_path, model_dir, corpus_parquet):
    """Stored entropy thresholds read as patience counts would exit nearly every row at layer 1."""
    with pytest.raises(ConfigError, match="give --threshold"):
        validate(config(tmp_path, corpus_parquet, model_dir, exit=ExitConfig(policy="patience")))
    plan = validate(config(tmp_path, corpus_parquet, model_dir, exit=ExitConfig(policy="patience", threshold=2)))
    assert set(plan.thresholds.values()) == {2.0}
    validate(config(tmp_path, corpus_parquet, model_dir, exit=ExitConfig(policy="entropy")))  # the stored one


@pytest.mark.parametrize("where", ["input", "parent", "inside"])
def test_output_never_replaces_or_lies_inside_the_input(tmp_path, model_dir, corpus_parquet, where):
    """--overwrite deletes the output before reading: an output that is (or holds) the input is refused."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part.parquet").write_bytes(open(corpus_parquet, "rb").read())
    output = {"input": corpus, "parent": tmp_path, "inside": corpus / "tagged"}[where]
    cfg = TagConfig(input=str(corpus), model=model_dir, output=str(output), overwrite=True)
    with pytest.raises(ConfigError, match="outside the input"):
        validate(cfg)
    assert (corpus / "part.parquet").exists()
