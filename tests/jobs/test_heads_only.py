"""The README's fastest way in, as a user runs it: exits trained onto a saved RoBERTa classifier
with `--heads-only`, then a corpus tagged through the Ray pipeline by the job script; every row
that runs to full depth gets the original model's label."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.backbones import backbone_tokenizer, save_stock_model
from tests.conftest import LABELS, NUM_LAYERS, TEXTS

REPO = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # two job subprocesses, one with its own Ray
def test_heads_only_onto_a_saved_roberta_classifier_then_tag_corpus(tmp_path):
    stock = save_stock_model("roberta", tmp_path / "your-roberta-classifier", seed=11)
    rows = pa.table({"id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS,
                     "label": [LABELS[i % 3] for i in range(len(TEXTS))]})
    pq.write_table(rows, tmp_path / "train.parquet")
    pq.write_table(pa.concat_tables([rows] * 4), tmp_path / "dev.parquet")
    (tmp_path / "corpus").mkdir()
    pq.write_table(rows.drop(["label"]), tmp_path / "corpus" / "part-0.parquet")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = run("jobs/train_exits.py", "--base-model", str(tmp_path / "your-roberta-classifier"), "--heads-only",
            "--train", str(tmp_path / "train.parquet"), "--eval", str(tmp_path / "dev.parquet"),
            "--output", str(tmp_path / "roberta-exits"), "--max-accuracy-drop", "0.3", "--max-length", "64",
            "--set", f"mlflow.tracking_uri={uri}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("jobs/tag_corpus.py", "--input", str(tmp_path / "corpus"), "--model", str(tmp_path / "roberta-exits"),
            "--output", str(tmp_path / "tagged"), "--id-column", "id", "--max-length", "64", "--audit-fraction", "1",
            "--set", f"mlflow.tracking_uri={uri}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = pq.read_table(tmp_path / "tagged").to_pandas().set_index("id")
    assert sorted(out.index) == sorted(rows.column("id").to_pylist())
    enc = backbone_tokenizer("roberta")(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        original = stock(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
    original = {f"d{i}": LABELS[int(k)] for i, k in enumerate(original)}
    assert all(out.loc[i, "full_depth_label"] == original[i] for i in out.index), "the audit's full depth is the original"
    at_end = out.index[out["exit_layer"] == NUM_LAYERS]
    assert all(out.loc[i, "label"] == original[i] for i in at_end)
