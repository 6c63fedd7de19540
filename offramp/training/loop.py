"""The training kit every recipe uses (the mechanisms, the classifier and the token drivers).

The start of a run (`begin`, `label_names`, `exit_config`), the optimizer loop, stage 1 on the
backbone, pooled features of the frozen backbone (so head-only stages train on a cache in
seconds), one full-depth pass over the dev set (from which per-layer accuracy, the accuracy /
mean-layers curve and the stored thresholds follow), and the report and its save. Recipes
import this module; it imports none of them (offramp.training.sequence picks the mechanism).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig

from offramp.exits import simulate
from offramp.config import ConfigError, TrainSettings
from offramp.models.sequence import EarlyExitSequenceModel
from offramp.models.base import SEQUENCE
from offramp.exits.stage import TORCH_DTYPES
from offramp.models.checkpoint import checkpoint_config, default_base_model, load_model, model_class, read_config
from offramp.models.heads import masked_mean
from offramp.quality import calibration

logger = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What a training run measured on the dev set; saved as the model's exit profile."""

    task: str  # "sequence" | "token" (offramp.models.base)
    train_rows: int
    eval_rows: int
    seconds: float
    layer_accuracy: dict[int, float]
    curve: list[dict]  # the stored exit mode's dev curve, full depth first
    chosen: dict  # its point the stored threshold comes from
    survival: list[float]
    losses: list[dict] = field(default_factory=list)  # {"stage", "step", "loss"}
    skip_rate: list[float] | None = None  # SmartBERT: share of dev rows skipping each layer at full depth
    task_curves: dict[str, list[dict]] | None = None  # token task: {exit mode: dev curve}
    task_chosen: dict[str, dict] | None = None  # token task: {exit mode: chosen point}
    calibration: dict | None = None  # the certificate of the stored thresholds (None: uncertified)
    final_head_refit: dict | None = None  # classifiers: the final head's refit on the frozen last layer

    def profile(self) -> dict:
        """The exit profile saved beside the weights (offramp.models.profile)."""
        out = {
            "dev_survival": self.survival,
            "dev_layer_accuracy": {str(k): v for k, v in self.layer_accuracy.items()},
            "dev_curve": self.curve,
            "chosen": self.chosen,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "train_seconds": self.seconds,
        }
        if self.task == SEQUENCE:
            out["dev_skip_rate"] = self.skip_rate
        if self.task_curves is not None:
            out[f"{self.task}_curves"], out[f"{self.task}_chosen"] = self.task_curves, self.task_chosen
        if self.calibration is not None:
            out["calibration"] = self.calibration
        if self.final_head_refit is not None:
            out["final_head_refit"] = self.final_head_refit
        return out


BUCKET_BATCHES = 50
"""Length bucketing: rows are shuffled, then sorted by length within windows of this many
batches, so each padded batch holds rows of similar length."""


def _batches(n: int, batch_size: int, rng: random.Random | None, lengths=None):
    """Row indices per step: a shuffled order; with `lengths`, bucketed by length within each
    window of BUCKET_BATCHES batches and the batches shuffled again. A batch then pads to about
    its rows' own length instead of the longest row's (half the tokens on debian_sections)."""
    order = list(range(n))
    if rng is not None:
        rng.shuffle(order)
    if lengths is None or rng is None:
        yield from (order[i : i + batch_size] for i in range(0, n, batch_size))
        return
    window = batch_size * BUCKET_BATCHES
    batches = []
    for w in range(0, n, window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    yield from batches


def _encode(tokenizer, texts, max_length, device=None):
    """Texts -> padded input tensors, on `device` when one is given (the model's)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return enc if device is None else {k: v.to(device) for k, v in enc.items()}


class _Progress:
    """One log line every few seconds with rate and ETA (training is long on CPU)."""

    def __init__(self, what: str, total: int, every: float = 15.0):
        self.what, self.total, self.every = what, total, every
        self.t0 = self.last = time.perf_counter()

    def step(self, done: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate else float("inf")
        logger.info("%s: %d/%d steps, loss %.4f, %.2f steps/s, ETA %.0fs", self.what, done, self.total, loss, rate, eta)


def _schedule(optim, total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )


def _optimize(params, n: int, cfg: TrainSettings, epochs: float, lr: float, stage: int, loss_of, losses, clip=None, lengths=None):
    """AdamW with linear warmup/decay over `epochs` passes of n rows; loss_of(row indices) -> loss.
    `params`: tensors, or AdamW parameter groups (dicts with their own "lr"). `lengths`: each
    row's length, to batch rows of similar length together (`_batches`). epochs 0: no step at all
    (a warm start with 0 epochs re-measures and re-certifies the model it loaded, unchanged)."""
    if epochs <= 0 or n == 0:
        return
    total = max(1, int(round(math.ceil(n / cfg.batch_size) * epochs)))
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    params = [p for g in optim.param_groups for p in g["params"]]  # flat, for clipping
    sched = _schedule(optim, total, cfg.warmup_ratio)
    rng = random.Random(cfg.seed + stage)
    progress = _Progress(f"stage {stage}", total)
    step = 0
    while step < total:
        for idx in _batches(n, cfg.batch_size, rng, lengths):
            loss = loss_of(idx)
            optim.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optim.step()
            sched.step()
            step += 1
            losses.append({"stage": stage, "step": step, "loss": loss.item()})
            progress.step(step, losses[-1]["loss"])
            if step >= total:
                break


@dataclass
class TrainRun:
    """What a mechanism's recipe trains on: rows (tokenized on demand) and where losses go."""

    model: EarlyExitSequenceModel
    tokenizer: object
    texts: list[str]
    y: torch.Tensor  # (N,) class ids
    cfg: TrainSettings
    losses: list[dict]
    final_features: torch.Tensor | None = None  # (N, 1, H) the frozen last layer pooled, once stage 2 cached it

    def encode(self, idx):
        """Rows `idx` tokenized, on the model's device."""
        return _encode(self.tokenizer, [self.texts[i] for i in idx], self.cfg.max_length, self.y.device)

    def optimize(self, params, epochs: float, lr: float, stage: int, loss_of, clip=None, n: int | None = None):
        """Steps over the training rows (bucketed by length, as they are tokenized per batch),
        or over `n` cached rows."""
        lengths = [len(t) for t in self.texts] if n is None else None
        _optimize(params, len(self.y) if n is None else n, self.cfg, epochs, lr, stage, loss_of, self.losses, clip, lengths)


def final_loss(run: TrainRun, idx) -> torch.Tensor:
    """The final classifier's CE on rows `idx` through the whole backbone (DeeBERT stage 1)."""
    model, enc = run.model, run.encode(idx)
    h = model.run_layers(model.embed(enc["input_ids"]), enc["attention_mask"]).states[-1]  # (B, T, H)
    return nn.functional.cross_entropy(model.head_logits(model.num_layers, h, enc["attention_mask"]), run.y[idx])


NEW_MODULES = ("exit_heads.", "prototypes.", "exit_predictor.", "gates.")  # what offramp adds to a backbone


def backbone_params(model) -> list:
    """Backbone and final classifier: what stage 1 trains (exit heads and signal modules excluded)."""
    return [p for n, p in model.named_parameters() if not n.startswith(NEW_MODULES)]


def head_groups(model, cfg: TrainSettings, heads: tuple[str, ...] = NEW_MODULES) -> list[dict]:
    """AdamW groups for training the whole model at once: the parameters named under `heads`
    (by default the modules offramp adds: exit heads, signal modules) at `head_lr`, the rest at
    `lr`. At the backbone's rate a fresh head barely moves in a few hundred steps."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n.startswith(heads)], "lr": cfg.head_lr},
            {"params": [p for n, p in named if not n.startswith(heads)], "lr": cfg.lr}]


@torch.no_grad()  # not inference_mode: the cache feeds autograd as an input later
def pooled_features(model, tokenizer, texts, max_length: int, batch_size: int = 64, final: bool = False):
    """(N, K-1, H) mean-pooled states of every internal exit layer (frozen backbone; gates
    deciding as at inference); with `final`, also (N, 1, H): the last layer pooled as the final
    head pools it, from the same pass."""
    model.eval()
    internal = model.exit_layers[:-1]
    progress = _Progress("features", math.ceil(len(texts) / batch_size))
    out, last, device = [], [], next(model.parameters()).device
    for b, i in enumerate(range(0, len(texts), batch_size)):
        enc = _encode(tokenizer, texts[i : i + batch_size], max_length, device)
        hidden = model.embed(enc["input_ids"])
        states = model.run_layers(hidden, enc["attention_mask"]).states
        out.append(torch.stack([masked_mean(states[l], enc["attention_mask"]) for l in internal], dim=1))
        if final:
            last.append(model.final_head().pool(states[-1], enc["attention_mask"]))
        progress.step(b + 1, 0.0)
    return (torch.cat(out), torch.cat(last)) if final else torch.cat(out)


FINAL_REFIT_STAGE = 4  # the final head's refit in the losses log (3: BERxiT's exit predictor)


def refit_final_head(run: "TrainRun", features: torch.Tensor, holdout: float = 0.1) -> dict | None:
    """Train the final head's stock modules further on the frozen backbone's pooled last layer
    (`features`, (N, 1, H)), as stage 2 trains the exit heads (head_lr, stage2_epochs), and keep
    the result only if it is right more often on a seeded `holdout` share of the training rows it
    did not train on. Stage 1 moves the head at the backbone's learning rate: on a small or
    short training run that leaves the full-depth head below the exit heads (the demo's final
    head scored 0.61 on dev against 0.67 at layer 5; refit 0.69). The stage-1 head saw the
    held-out rows, so the comparison favours it. None when there is nothing to refit."""
    cfg, model = run.cfg, run.model
    if features is None or cfg.heads_only or cfg.stage2_epochs <= 0 or len(features) < 20:
        return None
    head = model.final_head().head
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(cfg.seed))
    cut = max(1, int(len(features) * holdout))
    held, fit = order[:cut].to(run.y.device), order[cut:].to(run.y.device)
    x_fit, y_fit = features[fit], run.y[fit]

    def right() -> float:
        head.eval()
        with torch.no_grad():
            return float((head(features[held]).argmax(-1) == run.y[held]).float().mean())

    before, state = right(), {k: v.clone() for k, v in head.state_dict().items()}
    head.train()
    with torch.enable_grad():
        run.optimize(list(head.parameters()), cfg.stage2_epochs, cfg.head_lr, FINAL_REFIT_STAGE,
                     lambda idx: nn.functional.cross_entropy(head(x_fit[idx]), y_fit[idx]), n=len(fit))
    after = right()
    kept = after > before
    if not kept:
        head.load_state_dict(state)
    head.eval()
    logger.info("final head refit on the frozen last layer: %.4f -> %.4f on %d held-out training rows (%s)",
                before, after, cut, "kept" if kept else "stage-1 head kept")
    return {"before": before, "after": after, "rows": cut, "kept": kept}


def head_losses(model, feats: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Each internal head's CE on cached pooled features (B, K-1, H)."""
    heads = [model.exit_heads[str(l)] for l in model.exit_layers[:-1]]
    return [nn.functional.cross_entropy(h.classify(feats[:, k]), y) for k, h in enumerate(heads)]


def train_heads(run: TrainRun, features: torch.Tensor, loss_of, extra_params=(), stage: int = 2, epochs=None, y=None):
    """Internal heads (plus `extra_params`) on cached features of the frozen backbone.

    `loss_of(feats (B, K-1, H), y (B,))` -> loss. The backbone is frozen, so each head's
    pooled input is computed once and the heads train on the cache: many epochs cost seconds.
    `y` are the features' labels (default: every training row's)."""
    model = run.model
    y = run.y if y is None else y
    heads = [model.exit_heads[str(l)] for l in model.exit_layers[:-1]]
    for h in heads:
        h.train()
    params = [p for h in heads for p in h.parameters()] + list(extra_params)
    with torch.enable_grad():
        run.optimize(
            params,
            run.cfg.stage2_epochs if epochs is None else epochs,
            run.cfg.head_lr,
            stage,
            lambda idx: loss_of(features[idx], y[idx]),
            n=len(features),
        )
    for h in heads:
        h.eval()


@torch.inference_mode()
def full_pass(model, tokenizer, texts, max_length: int, batch_size: int = 64) -> simulate.HeadPass:
    """Every exit head's logits (and signals, and gate decisions) at full depth, on the
    model's device (a GPU when the model is on one)."""
    model.eval()
    device = next(model.parameters()).device
    logits, signal, skipped = [], [], []
    for i in range(0, len(texts), batch_size):
        enc = _encode(tokenizer, texts[i : i + batch_size], max_length, device)
        out = model(**enc)
        logits.append(torch.stack(out.exit_logits, dim=1).float().cpu().numpy())
        if model.signal_width:
            nan = torch.full((len(out.logits), model.signal_width), float("nan"), device=device)
            signal.append(torch.stack([a if a is not None else nan for a in out.signal], dim=1).float().cpu().numpy())
        if out.skipped is not None:
            skipped.append(out.skipped.cpu().numpy())
    if not logits:
        return simulate.HeadPass(np.zeros((0, len(model.exit_layers), model.config.num_labels)))
    return simulate.HeadPass(
        np.concatenate(logits), np.concatenate(signal) if signal else None, np.concatenate(skipped) if skipped else None
    )


def all_head_logits(model, tokenizer, texts, max_length: int, batch_size: int = 64) -> np.ndarray:
    """(N, K, C) logits of every exit head at full depth."""
    return full_pass(model, tokenizer, texts, max_length, batch_size).logits


def calibration_device() -> str:
    """Calibration's passes run on a GPU when the machine has one, in the dtype asked for."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def calibration_model(model_dir: str, dtype: str):
    """The saved model on `calibration_device`, computing in `dtype`, as a tagging stage in that
    dtype computes (the certificate covers runs in it)."""
    return load_model(model_dir).to(calibration_device(), dtype=TORCH_DTYPES[dtype]).eval()


def head_logits_for(model_dir: str, texts: list[str], max_length: int, batch_size: int = 64,
                    dtype: str = "float32") -> simulate.HeadPass:
    """Every exit head's output at full depth, from one pass of the saved model (`calibration_model`)."""
    model = calibration_model(model_dir, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return full_pass(model, tokenizer, texts, max_length, batch_size)


def begin(cfg: TrainSettings) -> str:
    """What every recipe does first: required paths, threads, the seed. Returns the checkpoint
    training starts from (--init-from, --base-model or the pip-shipped MiniLM)."""
    cfg.require("train", "eval", "output")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    return cfg.init_from or cfg.base_model or default_base_model()


def label_names(cfg: TrainSettings, seen: set[str], task: str = SEQUENCE) -> list[str]:
    """Class names in id order: the warm-start model's (--init-from reuses its classifier and
    heads, so its labels stay, and the training data may bring no label it has no class for), the
    fine-tuned classifier's with --heads-only (its `id2label`), else the sorted labels seen in the
    training data."""
    if cfg.init_from:
        have, source = read_config(cfg.init_from), f"--init-from {cfg.init_from}"
    elif cfg.heads_only:
        have, source = classifier_config(cfg.base_model, task), f"--heads-only: {cfg.base_model}"
    else:
        return sorted(seen)
    names = [have.id2label[i] for i in range(have.num_labels)]
    new = sorted(seen - set(names))
    if new:
        raise ConfigError(
            f"{source} has no class for training labels {new}; its classes are {names}: relabel the data, or "
            + ("fine-tune from --base-model without --heads-only" if cfg.heads_only else "train from --base-model")
        )
    return names


def classifier_config(directory: str, task: str) -> PretrainedConfig:
    """The config of a fine-tuned stock classifier for `task` (what --heads-only keeps), or a
    clear error for a bare encoder or a classifier of the other task."""
    config = checkpoint_config(directory)
    want = "ForSequenceClassification" if task == SEQUENCE else "ForTokenClassification"
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith(want) for a in archs):
        raise ConfigError(
            f"--heads-only keeps a fine-tuned classifier, but {directory} is {archs or 'a bare encoder'} "
            f"(a *{want} checkpoint is needed): drop --heads-only to fine-tune it"
        )
    return config


def freeze_all_but_exit_heads(model) -> list:
    """--heads-only: every parameter but the exit heads' stops training; returns the heads' parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.exit_heads.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def exit_config(base: str, names: list[str], cfg: TrainSettings, **fields) -> PretrainedConfig:
    """The base checkpoint's config (any backbone with an adapter) with the labels, exit layers
    and `fields` of the new model."""
    config = checkpoint_config(base)
    # set, not passed as from_pretrained kwargs: those silently drop keys the file lacks
    fields = dict(
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        exit_layers=list(cfg.exit_layers) if cfg.exit_layers else None,
        exit_thresholds=None,
        **fields,
    )
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def trainable_model(task: str, config: PretrainedConfig, base: str, device: str):
    """The model to train, from `base` with `config`, on `device`, in float32 whatever dtype the
    checkpoint was saved in: transformers loads a half-precision checkpoint as half precision, and
    an optimizer stepping half-precision weights loses small updates."""
    model = model_class(task, config).from_pretrained(base, config=config, dtype=torch.float32, use_safetensors=True)
    return model.to(device)


def save_trained(model, tokenizer, report: TrainReport, output: str) -> None:
    """Save weights (safetensors), tokenizer, labels, heads, thresholds and the dev exit profile."""
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    model.save_profile(output, report.profile())


def held_out_slice(n: int, fraction: float, seed: int):
    """(calibration rows, dev rows) of n eval rows: a seeded share `fraction` held out (none at 0)."""
    if fraction <= 0:
        return np.zeros(0, dtype=int), np.arange(n)
    return calibration.family_split(n, fraction, seed)
