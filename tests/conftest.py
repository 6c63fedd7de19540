"""Tiny random early-exit BERTs (transformers' BertModelTester sizes) built in code."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from transformers import AutoTokenizer, BertConfig

from offramp.models.sequence import EarlyExitBertForSequenceClassification

from pipelines import cli
from offramp.models.checkpoint import default_base_model
from offramp.policies import get_policy
from offramp.exits.simulate import head_scores
from offramp.training.loop import all_head_logits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LABELS = ["alpha", "beta", "gamma"]
NUM_LAYERS = 4

TEXTS = [
    "This package contains the Perl module for parsing configuration files.",
    "A fast network scanner",
    "fonts",
    "Library for reading and writing compressed archives; this is the development package with headers "
    "and static libraries needed to build programs against it, plus documentation and examples of use.",
    "Game of ancient warfare with real time strategy elements and a campaign",
    "python bindings",
    "Tools to manage the system's users, groups and their passwords on the command line",
    "Haskell library providing lenses",
    "documentation for the Rust standard library in HTML form for offline browsing",
    "x",
    "Emacs mode for editing OCaml source files with indentation and highlighting",
    "GNU R package for statistical analysis of large genomic data sets",
] * 3


def crash_once(stage_cls, marker, stage: int = 1):
    """`stage_cls` whose actor for `stage` kills its own process mid-batch, once (a file marks it)."""

    class CrashOnce(stage_cls):
        def __call__(self, batch):
            if self.spec.index == stage and not marker.exists():
                marker.write_text("x")
                os._exit(1)  # the actor process dies mid-batch
            return super().__call__(batch)

    return CrashOnce


def tiny_config(**extra) -> BertConfig:
    return BertConfig(
        vocab_size=30522,  # the MiniLM tokenizer's vocabulary, reused by the tiny models
        hidden_size=32,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
        initializer_range=0.5,  # large random weights: confident, varied heads
        **extra,
    )


def make_model(seed: int = 0, **extra) -> EarlyExitBertForSequenceClassification:
    torch.manual_seed(seed)
    return EarlyExitBertForSequenceClassification(tiny_config(**extra)).eval()


def spread_thresholds(model, tokenizer, texts, quantile: float = 0.35) -> list[float]:
    """Per-head entropy thresholds near a quantile of the head's own scores, so rows exit at many
    layers. Each sits midway between two distinct scores: no row is within float noise of a
    threshold, so batch-invariance checks compare decisions, not rounding."""
    logits = all_head_logits(model, tokenizer, texts, max_length=64)
    scores = head_scores(get_policy("entropy"), logits)  # (N, K)
    out = []
    for k in range(scores.shape[1]):
        values = np.unique(scores[:, k])
        i = min(max(int(quantile * len(values)), 1), len(values) - 1)
        out.append(float((values[i - 1] + values[i]) / 2))
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for one test module; 8 logical CPUs on 2 cores, so that read tasks and
    stage actors do not starve each other (DESIGN.md)."""
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def command(capsys):
    """Run an `offramp` command in this process, as a job script does after `import _common`:
    (exit status, stdout, stderr). A configuration error needs no torch or Ray, so it answers in
    milliseconds; each job test keeps one real subprocess for the script itself."""

    def run(*args) -> tuple[int, str, str]:
        status = cli.main(list(args))
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_base_model())


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A saved tiny early-exit model whose stored thresholds make rows exit at several layers."""
    path = tmp_path_factory.mktemp("tiny_model")
    model = make_model()
    model.config.exit_thresholds = spread_thresholds(model, tokenizer, TEXTS)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    model.save_profile(str(path), {"dev_survival": [0.7, 0.45, 0.3, 0.0]})
    return str(path)


@pytest.fixture(scope="session")
def corpus_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    n = len(TEXTS)
    pq.write_table(
        pa.table(
            {
                "id": [f"doc{i}" for i in range(n)],
                "text": TEXTS,
                "label": [LABELS[i % 3] for i in range(n)],
                "source": [f"src{i % 5}" for i in range(n)],
            }
        ),
        path,
    )
    return str(path)


# ---------------------------------------------------------------- one tiny model per exit mechanism

MECHANISM_FIELDS = {
    "deebert": dict(exit_mechanism="deebert", exit_policy="entropy"),
    "pabee": dict(exit_mechanism="pabee", exit_policy="patience"),
    "berxit": dict(exit_mechanism="berxit", exit_policy="learned", exit_predictor=True),
    "de3": dict(exit_mechanism="de3", exit_policy="hybrid", prototype_dim=8),
    "smartbert": dict(exit_mechanism="smartbert", exit_policy="entropy", skip_gates=True),
}


def midpoint_thresholds(policy, hp, exit_layers, quantile: float = 0.35, gap: float = 1e-3) -> list[float]:
    """Per-head thresholds midway between two observed scores at least `gap` apart, near a
    quantile, so rows exit at many layers and none sits within float noise of its threshold
    (the same text padded differently scores within ~1e-7 of itself)."""
    scores = head_scores(policy, hp, exit_layers)  # (N, K)
    out = []
    for k in range(scores.shape[1]):
        values = np.unique(np.round(scores[:, k][np.isfinite(scores[:, k])], 4))
        if not policy.lower_is_confident:
            values = values[::-1]
        start = min(max(int(quantile * len(values)), 1), len(values) - 1) if len(values) > 1 else 0
        cut = next((i for i in range(start, len(values)) if abs(values[i] - values[i - 1]) > gap), None)
        out.append(float((values[cut - 1] + values[cut]) / 2) if cut else policy.never_exits_threshold())
    return out


def make_mechanism_model(name: str, tokenizer, seed: int = 0):
    """A tiny random model of mechanism `name` with thresholds that make rows exit at many layers."""
    from offramp.training.loop import full_pass

    model = make_model(seed, **MECHANISM_FIELDS[name])
    if model.prototypes is not None:  # random prototypes: untrained ones are all zero
        for net in model.prototypes.values():
            net.prototypes.normal_()
    policy = get_policy(model.config.exit_policy)
    hp = full_pass(model, tokenizer, TEXTS, max_length=64)
    if policy.name == "patience":
        model.config.exit_thresholds = [1.0] * len(model.exit_layers)  # exit once two heads in a row agree
    else:
        model.config.exit_thresholds = midpoint_thresholds(policy, hp, model.exit_layers)
    return model


@pytest.fixture(scope="session")
def mechanism_dirs(tmp_path_factory, tokenizer):
    """{mechanism: saved tiny model directory}."""
    out = {}
    for name in MECHANISM_FIELDS:
        path = tmp_path_factory.mktemp(f"tiny_{name}")
        model = make_mechanism_model(name, tokenizer)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = str(path)
    return out


# ---------------------------------------------------------------- a tiny sequence-labeling model

TAGS = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # a BIO scheme: entity F1 is measured
SENTENCES = [text.split() for text in TEXTS[:12]] + [
    ["Open", "Free", "Fiasco", "Firmware", "Flasher", "."],
    ["Thus", "it", "'s", "a", "free", "alternative", "to", "Nokia", "'s", "flashing", "utility", "0xFFFFdeadbeefcafe"],
]


def gold_tags(words: list[str]) -> list[str]:
    """Deterministic BIO tags: capitalized runs are entities (ORG when the run starts a sentence)."""
    out, prev = [], "O"
    for i, w in enumerate(words):
        if w[:1].isupper():
            kind = "ORG" if i == 0 or prev.endswith("ORG") else "PER"
            out.append(("I-" if prev.endswith(kind) else "B-") + kind)
        else:
            out.append("O")
        prev = out[-1]
    return out


def make_token_model(seed: int = 0, **extra):
    from offramp.models.token import EarlyExitBertForTokenClassification

    torch.manual_seed(seed)
    cfg = tiny_config(**extra)  # its three labels are replaced by the tag set
    cfg.num_labels, cfg.id2label, cfg.label2id = len(TAGS), dict(enumerate(TAGS)), {t: i for i, t in enumerate(TAGS)}
    return EarlyExitBertForTokenClassification(cfg).eval()


def token_thresholds(model, tokenizer, sentences, quantile: float = 0.4) -> list[float]:
    """Per-head uncertainty thresholds midway between two observed word uncertainties near a
    quantile (window max, as TOKEE decides), so words halt at many layers and none within float noise."""
    from offramp.exits.token_pass import pad
    from offramp.models.token import normalized_entropy, window_max
    from offramp.text.words import encode_words

    ids, lengths, starts = pad(encode_words(tokenizer, sentences, 64))
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        states = model.layer_states(ids, mask)
    out = []
    valid = starts >= 0
    for l in model.exit_layers:
        h = torch.gather(states[l], 1, starts.clamp(min=0)[..., None].expand(-1, -1, states[l].shape[-1]))
        with torch.no_grad():
            u = window_max(normalized_entropy(model.head(l, h)), valid, model.config.exit_window)
        values = np.unique(np.round(u[valid].numpy(), 4))
        i = min(max(int(quantile * len(values)), 1), len(values) - 1)
        cut = next((j for j in range(i, len(values)) if values[j] - values[j - 1] > 1e-3), i)
        out.append(float((values[cut - 1] + values[cut]) / 2))
    return out


@pytest.fixture(scope="session")
def token_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny token model whose stored TOKEE thresholds halt words at several layers."""
    path = tmp_path_factory.mktemp("tiny_token_model")
    model = make_token_model(exit_window=1)
    model.config.exit_thresholds = token_thresholds(model, tokenizer, SENTENCES)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------- synthetic run summaries (capacity, report)


def stage(index, start, end, rows_in, busy_seconds, num_gpus=0.0, num_cpus=1.0, max_actors=1, torch_threads=1):
    return {
        "index": index, "start": start, "end": end, "min_actors": 1, "max_actors": max_actors,
        "batch_size": 64, "num_cpus": num_cpus, "num_gpus": num_gpus, "dtype": "float32",
        "device": "cuda" if num_gpus else "cpu", "torch_threads": torch_threads, "rows_in": rows_in,
        "busy_seconds": busy_seconds, "row_layers": 0, "tokens_in": 0, "batches": 10,
    }  # fmt: skip


def make_summary(stages=None, histogram=None, audit=None, wall_seconds=20.0, run_id="abc"):
    """Two stages over 6 layers: stage 0 runs 1000 rows in 10 s (100 docs per actor-second), stage 1
    gets 400 of them (survival 0.4) in 16 s (25 docs per actor-second); 0.5 GPU, 1 CPU per actor."""
    stages = stages or [stage(0, 0, 3, 1000, 10.0, num_gpus=0.5), stage(1, 3, 6, 400, 16.0, num_gpus=0.5)]
    rows = stages[0]["rows_in"]
    return {
        "run": {"input": "data/test.parquet", "model": "/m", "policy": "entropy", "run_id": run_id},
        "num_layers": 6,
        "metrics": {"rows": rows, "rows_labeled": rows, "wall_seconds": wall_seconds,
                    "docs_per_second": rows / wall_seconds, "mean_layers": 2.6, "ideal_speedup": 2.31,
                    "tokens": 30000, "accuracy": 0.7},
        "exit_histogram": histogram or {"1": 500, "2": 60, "3": 40, "4": 100, 5: 100, "6": 200},
        "stages": stages,
        "audit": audit,
        "calibration": None,
    }  # fmt: skip


def pytest_sessionfinish(session, exitstatus):
    """Tests that run the CLI in-process leave its embedded Ray up. Shut it down here, while
    the interpreter is whole, rather than in its exit: one full run here passed every test and
    then exited 139 (a crash in teardown)."""
    if ray.is_initialized():
        ray.shutdown()
