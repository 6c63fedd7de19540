"""What a calibration run needs (`offramp calibrate`, jobs/calibrate.py): the model, the rows
and the quality target its thresholds are certified for."""

from __future__ import annotations

from dataclasses import dataclass, field

from offramp.config.base import ConfigError, MlflowConfig, check_dtype, require


@dataclass(frozen=True)
class CalibrateConfig:
    """Everything a calibration run (`offramp calibrate`, jobs/calibrate.py) needs."""

    model: str | None = None
    """Model directory (the certified thresholds are written into it), or a registered version,
    models:/NAME/VERSION or models:/NAME@ALIAS: calibrated in a copy and registered as the
    model's next version, the source version unchanged."""
    register: str | None = None
    """Register the calibrated model as the next version of this registered model name (a
    directory model: also; a models:/ model registers under its own name unless this is given)."""
    data: str | None = None
    """Calibration rows (Parquet / JSONL / CSV), drawn from the traffic the model will tag."""
    text_column: str = "text"
    """Column holding each row's text."""
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
    """Rows per forward pass of the full-depth head pass."""
    dtype: str = "float32"
    """Compute dtype of the full-depth pass: the certificate covers tagging runs in this dtype
    only, so calibrate with the --dtype the runs will use (float32, bfloat16 or float16)."""
    points: int = 200
    """Candidates tested along the path (fixed in advance, dense near the confident end)."""
    policy: str = "auto"
    """Exit policy the thresholds are certified for, and written into the model with them: a name
    (`offramp.policies.POLICIES`), stored (the model's own), or auto (every policy the model can
    run is certified in a trial on the rows that shape the path, and the fastest is certified on
    the rest; a token model keeps its own)."""
    path: str = "auto"
    """Threshold path certified: per-layer (one threshold per head, moved together by one
    parameter shaped on a held-out share of the rows), global (one threshold for every head), or
    auto (whichever is faster at the target on that share; global for patience)."""
    family_fraction: float = 0.3
    """Share of the rows (seeded) that shapes a per-layer path; the rest certify."""
    seed: int = 0
    """Seed of the row sample drawn under max_rows."""
    dry_run: bool = False
    """Report and log, but leave the model directory unchanged."""
    torch_threads: int = 0
    """Intra-op torch threads; 0 = torch's default."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Where the calibration is logged."""

    def __post_init__(self):
        if (self.max_accuracy_drop is None) == (self.min_agreement is None):
            raise ConfigError("state one target: --max-accuracy-drop X (labeled data) or --min-agreement Y (any data)")
        if self.max_accuracy_drop is not None and not 0 < self.max_accuracy_drop < 1:
            raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop} is a fraction, e.g. 0.01 for 1 point")
        if self.min_agreement is not None and not 0 < self.min_agreement < 1:
            raise ConfigError(f"min_agreement={self.min_agreement} is a fraction below 1, e.g. 0.97")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence} must be in (0, 1), e.g. 0.9")
        if self.path not in ("auto", "per-layer", "global"):
            raise ConfigError(f"path {self.path!r}: use auto, per-layer or global")
        if not 0 < self.family_fraction < 1:
            raise ConfigError(f"family_fraction={self.family_fraction} must be in (0, 1), e.g. 0.3")
        check_dtype(self.dtype)
        if self.points < 2:
            raise ConfigError(f"points={self.points} must be >= 2")
        registers = self.register or (self.model or "").startswith("models:/")
        if registers and not self.mlflow.enabled:
            raise ConfigError("a registered model (models:/ or --register) gets its calibrated version from the "
                              "calibration's MLflow run: drop --no-mlflow.enabled, "
                              "or calibrate a directory without --register")

    def require(self, *names: str) -> None:
        """Fail with the flag to set when a required field is missing."""
        require(self, *names)
