"""Small frozen config objects, validated at the edge.

YAML is read once in `jobs/`, turned into these objects by `from_dict`, and each
module receives only the sub-config it needs. Unknown keys and invalid values raise
`ConfigError` with a message that names the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A configuration problem found at start, before any work is done."""


EXIT_MODES = ("token", "sentence")  # sequence labeling: TOKEE, SENTEE
SENTENCE_POOLS = ("max", "mean")


def check_token_exit(mode: str, pool: str, window: int) -> None:
    """Token exit settings, checked where they enter (config, model, CLI)."""
    if mode not in EXIT_MODES:
        raise ConfigError(f"token exit mode {mode!r}: use one of {list(EXIT_MODES)} (token = TOKEE, sentence = SENTEE)")
    if pool not in SENTENCE_POOLS:
        raise ConfigError(f"sentence_pool {pool!r}: use one of {list(SENTENCE_POOLS)}")
    if window < 0:
        raise ConfigError(f"exit_window={window} must be >= 0 (words on each side of a word)")


@dataclass(frozen=True)
class ExitConfig:
    """Which exit criterion runs and where its thresholds come from."""

    policy: str | None = None
    """Exit policy name (see `offramp.policies.POLICIES`); None = the one stored with the model."""
    threshold: float | None = None
    """One threshold for every exit head; overrides the thresholds stored with the model."""
    thresholds: tuple[float, ...] | None = None
    """One threshold per exit head, in head order; overrides the stored ones."""
    disabled: bool = False
    """Run every row to full depth (the parity / full-depth baseline)."""
    skip_gates: bool = True
    """SmartBERT models: rows skip the layers their gates say to skip. False = every row runs
    every layer it reaches (with `disabled`, the every-layer baseline). Ignored without gates."""
    mode: str | None = None
    """Token models: token (TOKEE: each word halts on its own) or sentence (SENTEE); None = stored."""
    window: int | None = None
    """Token models, TOKEE: words on each side a word's uncertainty is max-pooled over; None = stored."""
    sentence_pool: str | None = None
    """Token models, SENTEE: max or mean of the words' uncertainty; None = stored."""

    def __post_init__(self):
        if self.threshold is not None and self.thresholds is not None:
            raise ConfigError("exit.threshold and exit.thresholds are both set; keep one of them")
        check_token_exit(self.mode or "token", self.sentence_pool or "max", 0 if self.window is None else self.window)


@dataclass(frozen=True)
class StageConfig:
    """One actor pool holding a contiguous shard of layers [start, end)."""

    layers: tuple[int, int] | None = None
    """[start, end) layer range; None = split the model's layers evenly across stages."""
    min_actors: int = 1
    """ActorPoolStrategy min_size."""
    max_actors: int | None = None
    """ActorPoolStrategy max_size; None = sized from measured survival (stage 0: min_actors)."""
    batch_size: int | None = None
    """Rows per Ray batch; None = sized from measured survival so each forward pass gets about
    `TagConfig.batch_size` running rows (exited rows ride along without compute)."""
    num_cpus: float = 1.0
    """Logical CPUs each actor reserves (fractional allowed)."""
    num_gpus: float = 0.0
    """GPUs each actor reserves (fractional allowed; 0 on CPU)."""
    dtype: str = "float32"
    """Compute dtype of this stage's layers: float32, float16 or bfloat16."""
    torch_threads: int = 0
    """Intra-op threads per actor; 0 = Ray's rule on a cluster, the machine's cores shared on a local run."""
    max_tokens: int = 4096
    """Padded tokens per forward pass: a batch's running rows are sorted by length and cut into
    passes of at most this many (rows x longest row) tokens, so short rows are not padded to
    long ones; 0 = the whole batch in one pass."""

    def __post_init__(self):
        if self.max_tokens < 0:
            raise ConfigError(f"stage max_tokens={self.max_tokens} must be >= 0 (0 = one pass per batch)")
        if self.layers is not None:
            if len(self.layers) != 2 or self.layers[0] >= self.layers[1] or self.layers[0] < 0:
                raise ConfigError(f"stage layers {list(self.layers)} must be [start, end) with 0 <= start < end")
        if self.min_actors < 1 or (self.max_actors is not None and self.max_actors < self.min_actors):
            raise ConfigError(
                f"stage actors min={self.min_actors} max={self.max_actors}: need 1 <= min_actors <= max_actors"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"stage batch_size={self.batch_size} must be >= 1")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ConfigError("stage num_cpus/num_gpus must be >= 0")
        if self.dtype not in DTYPES:
            raise ConfigError(f"stage dtype {self.dtype!r} is not one of {list(DTYPES)}")


@dataclass(frozen=True)
class RayConfig:
    """How the driver connects to Ray."""

    address: str | None = None
    """None: join RAY_ADDRESS / a job's cluster if there is one, else start an embedded local Ray."""
    num_cpus: int = 8
    """Logical CPUs of an embedded local Ray (more than cores so read tasks and actors don't starve)."""
    autoscaling: bool = False
    """The cluster adds nodes on demand (cluster.yaml's autoscaler): skip the start-time check
    that the stage actors fit the resources the cluster has now."""


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    experiment: str | None = None
    """Experiment name; None = offramp-tag for tagging runs, offramp-train for training runs."""
    run_name: str | None = None
    """Run name; None lets MLflow pick one."""
    enabled: bool = True
    """Log to MLflow at all."""


@dataclass(frozen=True)
class AuditConfig:
    """A random sample of rows that runs to full depth whatever the exits say, to check quality."""

    fraction: float = 0.01
    """Share of rows audited (0 = no audit). Chosen by a hash of (seed, row id): reproducible,
    independent of batching, and the same rows in every run with the same seed."""
    seed: int = 0
    target_agreement: float | None = None
    """Minimum agreement with full depth; None = the one stored by jobs/calibrate.py (if any)."""
    confidence: float = 0.95
    """Confidence of the reported interval."""
    alarm: str = "estimate"
    """What fails the job under fail_below_target: `estimate` (the point estimate is below target,
    as the run's tag says) or `bound` (even the upper confidence bound is below: a significant drop)."""
    fail_below_target: bool = False
    """Exit with status 4 when the alarm fires, so a nightly scheduler notices."""

    def __post_init__(self):
        if not 0 <= self.fraction <= 1:
            raise ConfigError(f"audit.fraction={self.fraction} must be in [0, 1], e.g. 0.01 for 1% of rows")
        if self.target_agreement is not None and not 0 < self.target_agreement <= 1:
            raise ConfigError(f"audit.target_agreement={self.target_agreement} is a fraction, e.g. 0.97")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"audit.confidence={self.confidence} must be in (0, 1), e.g. 0.95")
        if self.alarm not in ("estimate", "bound"):
            raise ConfigError(f"audit.alarm {self.alarm!r}: use estimate or bound")


@dataclass(frozen=True)
class TagConfig:
    """Everything `jobs/tag_corpus.py` needs."""

    input: str | None = None
    """Parquet / JSONL / text file or directory, local path or pyarrow-filesystem URI."""
    model: str | None = None
    """Early-exit model directory written by jobs/train_exits.py."""
    output: str | None = None
    """Output directory for the Parquet files."""
    input_format: str = "auto"
    """auto (from the file extension), parquet, jsonl or text."""
    text_column: str = "text"
    words_column: str | None = None
    """Token models: a column holding each row's words (a list of str); None = split text_column
    into words by offramp.text.words.split_words (whitespace; punctuation and clitics apart)."""
    id_column: str | None = "id"
    """Id column; None = a row number is generated."""
    label_column: str | None = None
    """Gold label column; when set, accuracy is measured and logged (token models: a list of tags
    per row, word accuracy and, for BIO tags, entity F1)."""
    passthrough_columns: tuple[str, ...] = ()
    """Input columns copied to the output unchanged."""
    max_length: int = 128
    """Tokens per document (incl. [CLS]/[SEP]); longer documents are truncated and counted."""
    batch_size: int = 64
    """Running rows per forward pass that stage batch sizes aim for."""
    overwrite: bool = False
    """Replace an existing output directory instead of failing."""
    tokenize_batch_size: int = 256
    """Rows per tokenization task batch."""
    num_stages: int = 1
    """Number of stages when `stages` is empty or gives no layer ranges."""
    layout: str = "balanced"
    """How layers are split when stages give no ranges: even, or balanced (equal expected
    work per stage from the model's measured survival; even when none was measured)."""
    stages: tuple[StageConfig, ...] = ()
    """Explicit per-stage layout; overrides num_stages."""
    carry_dtype: str = "float16"
    """Dtype of hidden states carried between stages."""
    full_depth_eval_rows: int = 0
    """With labels: also run this many rows at full depth to log full-depth accuracy (-1 = all)."""
    plan_target_docs_per_hour: float | None = None
    """Throughput the run report's capacity recommendation is for; None = this run's own rate."""
    exit: ExitConfig = field(default_factory=ExitConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self):
        if self.input_format not in ("auto", "parquet", "jsonl", "text"):
            raise ConfigError(f"input_format {self.input_format!r}: use auto, parquet, jsonl or text")
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too small; use at least 8 tokens")
        if self.layout not in ("even", "balanced"):
            raise ConfigError(f"layout {self.layout!r}: use even or balanced")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if self.num_stages < 1:
            raise ConfigError(f"num_stages={self.num_stages} must be >= 1")
        if self.carry_dtype not in DTYPES:
            raise ConfigError(f"carry_dtype {self.carry_dtype!r} is not one of {list(DTYPES)}")

    def require(self, *names: str) -> None:
        """Fail with the flag to set when a required field is missing."""
        for name in names:
            if getattr(self, name) in (None, ""):
                raise ConfigError(f"{name} is not set; pass --{name.replace('_', '-')} or set `{name}:` in --config")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `jobs/train_exits.py` needs."""

    train: str | None = None
    """Labeled training data: Parquet / JSONL / CSV path, or a hub dataset name where online."""
    eval: str | None = None
    """Labeled dev data used for per-layer accuracy and threshold selection."""
    output: str | None = None
    """Directory the early-exit model is saved to."""
    base_model: str | None = None
    """Local Hugging Face BERT-family checkpoint; None = the pip-shipped all-MiniLM-L6-v2."""
    mechanism: str = "deebert"
    """Exit mechanism and its training recipe (offramp.training.mechanisms): deebert, pabee, berxit, de3, smartbert."""
    init_from: str | None = None
    """Warm start from an offramp model directory of the same labels (backbone, classifier, heads);
    the mechanism's new modules start fresh. With stage1_epochs=0 the backbone stays as it is."""
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    max_train_rows: int | None = None
    """Use at most this many training rows (a seeded random sample)."""
    max_eval_rows: int | None = None
    batch_size: int = 32
    stage1_epochs: float = 2.0
    """DeeBERT stage 1: backbone + final classifier."""
    stage2_epochs: float = 20.0
    """DeeBERT stage 2: internal exit heads only, on cached features of the frozen backbone (cheap)."""
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    exit_layers: tuple[int, ...] | None = None
    """1-based layers with an exit head; None = every layer. The last layer always has one."""
    policy: str | None = None
    """Exit policy stored with the model; None = the mechanism's own (deebert/smartbert entropy,
    pabee patience, berxit learned, de3 hybrid)."""
    sparsity_weight: float = 0.04
    """SmartBERT stage 1: weight of the term rewarding skipping (lambda / sum of mean gate values)."""
    layer_contrastive_weight: float = 0.01
    """SmartBERT stage 1: weight of cross-layer contrastive learning on token states (eta1)."""
    head_contrastive_weight: float = 0.05
    """SmartBERT stage 2: weight of contrastive learning between adjacent exit heads (eta2)."""
    hard_weight_epochs: float = 1.0
    """SmartBERT stage 1: the last this-many epochs use the hard weight mechanism (straight-through gates)."""
    prototype_dim: int = 128
    """DE³-BERT: width of each exit's prototype space."""
    prototype_momentum: float = 0.1
    """DE³-BERT: moving-average rate of the class prototypes."""
    distance_weight: float = 1.0
    """DE³-BERT: weight of the distance-aware regularizer beside the heads' CE."""
    predictor_epochs: float = 10.0
    """BERxiT: epochs of the learning-to-exit predictor on cached features."""
    task: str = "auto"
    """sequence (one label per row), token (a tag per word: sequence labeling) or auto (token when
    the label column holds lists). Token mode: text_column names the words column (list of str)."""
    token_exit_mode: str = "token"
    """Token task: exit mode stored with the model, token (TOKEE) or sentence (SENTEE)."""
    sentence_pool: str = "max"
    """Token task, SENTEE: pool the words' uncertainty with max or mean."""
    exit_window: int = 2
    """Token task, TOKEE: a word halts when the max uncertainty over this many words on each side is low."""
    self_sampling_epochs: float = 1.0
    """Token task: epochs of self-sampling fine-tuning after joint fine-tuning (stage1_epochs)."""
    sample_max_window: int = 3
    """Token task, self-sampling: each sentence's window is drawn from 0..this."""
    sample_max_threshold: float = 0.4
    """Token task, self-sampling: each sentence's threshold is drawn from U(0, this)."""
    max_accuracy_drop: float = 0.01
    """Stored thresholds: fastest global threshold whose dev accuracy is within this of full depth."""
    seed: int = 0
    torch_threads: int = 0
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self):
        if self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("batch_size must be >= 1 and max_length >= 8")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0:
            raise ConfigError("stage1_epochs and stage2_epochs must be >= 0")
        if not 0 <= self.hard_weight_epochs <= max(self.stage1_epochs, 0) and self.mechanism == "smartbert":
            raise ConfigError(
                f"hard_weight_epochs={self.hard_weight_epochs} must lie in [0, stage1_epochs={self.stage1_epochs}]"
            )
        if self.prototype_dim < 2 or not 0 < self.prototype_momentum <= 1:
            raise ConfigError("prototype_dim must be >= 2 and prototype_momentum in (0, 1]")
        if not 0 <= self.max_accuracy_drop < 1:
            raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop} is a fraction, e.g. 0.01 for 1 point")
        if self.task not in ("auto", "sequence", "token"):
            raise ConfigError(f"task {self.task!r}: use auto, sequence or token")
        if self.self_sampling_epochs < 0 or self.sample_max_window < 0 or not 0 <= self.sample_max_threshold <= 1:
            raise ConfigError("self_sampling_epochs and sample_max_window must be >= 0, sample_max_threshold in [0, 1]")
        check_token_exit(self.token_exit_mode, self.sentence_pool, self.exit_window)

    def require(self, *names: str) -> None:
        TagConfig.require(self, *names)  # same message shape


@dataclass(frozen=True)
class CalibrateConfig:
    """Everything `jobs/calibrate.py` needs."""

    model: str | None = None
    """Model directory; the certified thresholds are written into it."""
    data: str | None = None
    """Calibration rows (Parquet / JSONL / CSV), drawn from the traffic the model will tag."""
    text_column: str = "text"
    label_column: str | None = None
    """Gold labels; needed for an accuracy target only."""
    max_accuracy_drop: float | None = None
    """Target: accuracy at most this fraction below full depth (0.01 = 1 point). Needs labels."""
    min_agreement: float | None = None
    """Target: early exit agrees with full depth on at least this fraction of rows. No labels needed."""
    confidence: float = 0.9
    """Probability, over the draw of the calibration set, that the target holds."""
    max_rows: int | None = None
    """Use at most this many rows (a seeded random sample)."""
    max_length: int = 128
    """Tokens per row, as in tagging."""
    batch_size: int = 64
    points: int = 200
    """Candidate thresholds tested (fixed in advance, dense near the confident end)."""
    seed: int = 0
    dry_run: bool = False
    """Report and log, but leave the model directory unchanged."""
    torch_threads: int = 0
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self):
        if (self.max_accuracy_drop is None) == (self.min_agreement is None):
            raise ConfigError("state one target: --max-accuracy-drop X (labeled data) or --min-agreement Y (any data)")
        if self.max_accuracy_drop is not None and not 0 < self.max_accuracy_drop < 1:
            raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop} is a fraction, e.g. 0.01 for 1 point")
        if self.min_agreement is not None and not 0 < self.min_agreement < 1:
            raise ConfigError(f"min_agreement={self.min_agreement} is a fraction below 1, e.g. 0.97")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence} must be in (0, 1), e.g. 0.9")
        if self.points < 2:
            raise ConfigError(f"points={self.points} must be >= 2")

    def require(self, *names: str) -> None:
        TagConfig.require(self, *names)


# ---------------------------------------------------------------- dict -> dataclass


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp, True
    return tp, False


def _coerce(value: Any, tp, where: str):
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {[f.name for f in dataclasses.fields(tp)]}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        args = typing.get_args(tp)
        item = args[0]
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(value) != 2:
                raise ConfigError(f"{where} must be a list of 2 values, got {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={value!r} is not a valid {tp.__name__}") from None
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a (YAML) mapping; unknown keys raise with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint} valid keys here: {names}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(cls, path: str | None, overrides: dict[str, Any] | None = None, sets: list[str] = ()):
    """Read YAML (optional), apply CLI overrides (dotted keys) and `--set k=v` strings."""
    tree: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} not found; pass an existing file to --config (see conf/)")
        tree = yaml.safe_load(p.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must hold a YAML mapping at top level")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, key, value)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write it as key.path=value")
        key, _, raw = item.partition("=")
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    return from_dict(cls, tree)
