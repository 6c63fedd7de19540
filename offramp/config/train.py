"""The training settings every mechanism and task shares.

`offramp.training.config.TrainConfig` adds one section per mechanism that has options
(declared in that mechanism's file) and one for the token task: those modules hold torch
code, so the whole class is assembled there, from the mechanism registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from offramp.config.base import ConfigError, MlflowConfig, require

TASKS = ("auto", "sequence", "token")


@dataclass(frozen=True)
class TrainSettings:
    """What every training run (`offramp train`, jobs/train_exits.py) needs, whatever the mechanism."""

    train: str | None = None
    """Labeled training data: Parquet / JSONL / CSV path, or a hub dataset name where online."""
    eval: str | None = None
    """Labeled dev data used for per-layer accuracy and threshold selection."""
    output: str | None = None
    """Directory the early-exit model is saved to."""
    base_model: str | None = None
    """Local Hugging Face checkpoint of a supported backbone (BERT, RoBERTa, XLM-RoBERTa, ELECTRA,
    DistilBERT; safetensors); None = the pip-shipped all-MiniLM-L6-v2."""
    heads_only: bool = False
    """Keep --base-model, a fine-tuned *ForSequenceClassification (or *ForTokenClassification), as it
    is: its labels (id2label), backbone and classifier are frozen and only the exit heads train
    (DeeBERT's stage 2), so wherever a row runs to full depth it gets the original model's label."""
    mechanism: str = "deebert"
    """Exit mechanism and its training recipe (offramp.training.mechanisms): deebert, pabee, berxit, de3, smartbert."""
    init_from: str | None = None
    """Warm start from an offramp model directory of the same labels (backbone, classifier, heads);
    the mechanism's new modules start fresh. With stage1_epochs=0 the backbone stays as it is."""
    text_column: str = "text"
    """Column holding each row's text (token task: its words, a list of str)."""
    label_column: str = "label"
    """Column holding each row's label (token task: a list of tags, one per word)."""
    max_length: int = 128
    """Tokens per row (incl. [CLS]/[SEP]); longer rows are truncated."""
    max_train_rows: int | None = None
    """Use at most this many training rows (a seeded random sample)."""
    max_eval_rows: int | None = None
    """Use at most this many dev rows (a seeded random sample)."""
    batch_size: int = 32
    """Rows per optimizer step."""
    stage1_epochs: float = 2.0
    """Stage 1: backbone + final classifier (token task: joint fine-tuning of backbone and every head)."""
    stage2_epochs: float = 20.0
    """DeeBERT stage 2: internal exit heads only, on cached features of the frozen backbone (cheap)."""
    lr: float = 5e-5
    """Learning rate of the backbone (stage 1; token task: both stages, every head at head_lr)."""
    head_lr: float = 1e-3
    """Learning rate of exit heads and the modules a mechanism adds (gates, prototypes, predictor)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = 0.06
    """Share of each stage's steps with a linearly rising learning rate."""
    exit_layers: tuple[int, ...] | None = None
    """1-based layers with an exit head; None = every layer. The last layer always has one."""
    policy: str | None = None
    """Exit policy stored with the model; None = the mechanism's own (deebert/smartbert entropy,
    pabee patience, berxit learned, de3 hybrid; token task max_prob); auto (classifiers) = every
    policy the model can run is certified in a trial on the dev rows, and the fastest is stored
    with the thresholds certified for it."""
    task: str = "auto"
    """sequence (one label per row), token (a tag per word: sequence labeling) or auto (token when
    the label column holds lists). Token mode: text_column names the words column (list of str)."""
    final_pooling: str = "auto"
    """How the final (full-depth) head pools the last layer: mean, cls, or auto = as the base
    checkpoint was trained to pool (mean for sentence-transformers checkpoints that declare it in
    their Pooling config, cls otherwise). Stored in the model's config.json. Classifiers only."""
    max_accuracy_drop: float = 0.01
    """Stored thresholds: certified (Learn then Test, at `confidence`) to lose at most this accuracy
    against full depth, on the calibration slice held out of the eval rows."""
    confidence: float = 0.9
    """Probability, over the draw of the calibration slice, that the stored thresholds keep their promise."""
    calibration_fraction: float | None = None
    """Share of the eval rows (seeded) held out to certify the stored thresholds; the rest are dev
    rows (per-layer accuracy, the trade-off curve, the shape of the per-layer path). 0 = no
    certificate: the stored thresholds are the dev-chosen ones, marked uncertified. None = 0.3 for
    classifiers, 0.5 for token models: a token certificate bets on sentences whose word-accuracy
    drop is bounded only by [-1, 1] a priori, so it needs more of them (on a 16,000-sentence
    debian_pos tagger, 1,200 certifying sentences certified 58.8% of token-layers saved on test,
    2,000 certified 63.4%: BENCHMARKS.md)."""
    seed: int = 0
    """Seed of row sampling, shuffling and weight initialization."""
    torch_threads: int = 0
    """Intra-op torch threads; 0 = torch's default."""
    device: str = "auto"
    """Where a sequence classifier trains: auto (a GPU when the machine has one), cpu or cuda.
    Token models train on the CPU."""
    register: str | None = None
    """Log the trained model with the run and register it as a new version of this registered
    model name (then: models:/NAME/VERSION for calibrate, tag and serve)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Where the training run is logged."""

    def __post_init__(self):
        if self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("batch_size must be >= 1 and max_length >= 8")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0:
            raise ConfigError("stage1_epochs and stage2_epochs must be >= 0")
        if not 0 <= self.max_accuracy_drop < 1:
            raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop} is a fraction, e.g. 0.01 for 1 point")
        if self.calibration_fraction is not None and not 0 <= self.calibration_fraction < 1:
            raise ConfigError(f"calibration_fraction={self.calibration_fraction} must be in [0, 1), e.g. 0.3")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence} must be in (0, 1), e.g. 0.9")
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r}: use auto, sequence or token")
        if self.final_pooling not in ("auto", "cls", "mean"):
            raise ConfigError(f"final_pooling {self.final_pooling!r}: use auto, cls or mean")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device {self.device!r}: use auto, cpu or cuda")
        if self.heads_only:
            if not self.base_model or self.init_from:
                raise ConfigError("--heads-only trains exits onto a fine-tuned classifier: pass it as --base-model DIR "
                                  "(not --init-from)")
            if self.mechanism == "smartbert":
                raise ConfigError("--heads-only cannot train smartbert: its skipping gates change what the frozen layers "
                                  "compute and train with the backbone; use deebert, pabee, berxit or de3")
            if self.final_pooling == "mean":
                raise ConfigError("--heads-only keeps the classifier's own head, which pools as it was trained: "
                                  "drop --final-pooling mean")
        if self.register and not self.mlflow.enabled:
            raise ConfigError("--register logs the model with the training's MLflow run: "
                              "drop --no-mlflow.enabled or --register")

    def held_out_fraction(self, task: str) -> float:
        """`calibration_fraction`, its default resolved for the task (sequence or token)."""
        if self.calibration_fraction is not None:
            return self.calibration_fraction
        return 0.5 if task == "token" else 0.3

    def torch_device(self) -> str:
        """The device training runs on: `device` with auto resolved."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda: this machine has no GPU that torch can use; use --device auto or cpu")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def require(self, *names: str) -> None:
        """Fail with the flag to set when a required field is missing."""
        require(self, *names)
