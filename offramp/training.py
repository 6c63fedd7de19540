"""DeeBERT's two-stage fine-tuning, then thresholds chosen on the dev set.

Stage 1 fine-tunes the backbone and the final classifier on the final layer's loss.
Stage 2 freezes both and trains the internal exit heads on the sum of their
losses (the backbone's states are computed without gradients, so it is cheap).
Then one full-depth pass over the dev set gives every head's logits, from which
per-layer accuracy, the accuracy / mean-layers curve and the stored thresholds
follow.
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
from transformers import AutoTokenizer, BertConfig

from offramp import thresholds as T
from offramp.config import ConfigError, TrainConfig
from offramp.data import load_labeled
from offramp.modeling import EarlyExitBertForSequenceClassification, default_base_model, masked_mean
from offramp.policies import get_policy

logger = logging.getLogger(__name__)


@dataclass
class TrainReport:
    train_rows: int
    eval_rows: int
    seconds: float
    layer_accuracy: dict[int, float]
    curve: list[dict]
    chosen: dict
    survival: list[float]
    losses: list[dict] = field(default_factory=list)  # {"stage", "step", "loss"}


def _batches(n: int, batch_size: int, rng: random.Random | None):
    order = list(range(n))
    if rng is not None:
        rng.shuffle(order)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def _encode(tokenizer, texts, max_length):
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


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


def _optimize(params, n: int, cfg: TrainConfig, epochs: float, lr: float, stage: int, loss_of, losses, clip=None):
    """AdamW with linear warmup/decay over `epochs` passes of n rows; loss_of(row indices) -> loss."""
    total = max(1, int(round(math.ceil(n / cfg.batch_size) * epochs)))
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = _schedule(optim, total, cfg.warmup_ratio)
    rng = random.Random(cfg.seed + stage)
    progress = _Progress(f"stage {stage}", total)
    step = 0
    while step < total:
        for idx in _batches(n, cfg.batch_size, rng):
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


def _train_backbone(model, tokenizer, texts, y, cfg: TrainConfig, params, losses):
    """DeeBERT stage 1: backbone + final classifier on the final layer's loss."""

    def loss_of(idx):
        enc = _encode(tokenizer, [texts[i] for i in idx], cfg.max_length)
        h = model.bert(**enc).last_hidden_state  # (B, T, H)
        return nn.functional.cross_entropy(model.head_logits(model.num_layers, h, enc["attention_mask"]), y[idx])

    _optimize(params, len(texts), cfg, cfg.stage1_epochs, cfg.lr, 1, loss_of, losses, clip=1.0)


@torch.inference_mode()
def pooled_features(model, tokenizer, texts, max_length: int, batch_size: int = 64) -> torch.Tensor:
    """(N, K-1, H) mean-pooled states of every internal exit layer (frozen backbone)."""
    model.eval()
    internal = model.exit_layers[:-1]
    progress = _Progress("stage 2 features", math.ceil(len(texts) / batch_size))
    out = []
    for b, i in enumerate(range(0, len(texts), batch_size)):
        enc = _encode(tokenizer, texts[i : i + batch_size], max_length)
        states = model.bert(**enc, output_hidden_states=True).hidden_states
        out.append(torch.stack([masked_mean(states[l], enc["attention_mask"]) for l in internal], dim=1))
        progress.step(b + 1, 0.0)
    return torch.cat(out)


def _train_heads(model, features: torch.Tensor, y, cfg: TrainConfig, losses):
    """DeeBERT stage 2: internal heads on the sum of their losses, backbone frozen.

    The backbone is frozen, so each head's pooled input is computed once and the heads
    train on the cache: many epochs cost seconds."""
    heads = [model.exit_heads[str(l)] for l in model.exit_layers[:-1]]
    for h in heads:
        h.train()

    def loss_of(idx):
        feats = features[idx]  # (B, K-1, H)
        return sum(nn.functional.cross_entropy(h.classify(feats[:, k]), y[idx]) for k, h in enumerate(heads))

    params = [p for h in heads for p in h.parameters()]
    _optimize(params, len(y), cfg, cfg.stage2_epochs, cfg.head_lr, 2, loss_of, losses)


@torch.inference_mode()
def all_head_logits(model, tokenizer, texts, max_length: int, batch_size: int = 64) -> np.ndarray:
    """(N, K, C) logits of every exit head at full depth."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = _encode(tokenizer, texts[i : i + batch_size], max_length)
        out.append(torch.stack(model(**enc).exit_logits, dim=1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.exit_layers), model.config.num_labels))


def train_early_exit(cfg: TrainConfig):
    """Fine-tune an early-exit model as DeeBERT does; return (model, tokenizer, TrainReport)."""
    cfg.require("train", "eval", "output")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    base = cfg.base_model or default_base_model()
    policy = get_policy(cfg.policy)
    texts, labels = load_labeled(cfg.train, cfg.text_column, cfg.label_column, cfg.max_train_rows, cfg.seed)
    dev_texts, dev_labels = load_labeled(cfg.eval, cfg.text_column, cfg.label_column, cfg.max_eval_rows, cfg.seed)
    if len(texts) == 0 or len(dev_texts) == 0:
        raise ConfigError("no usable rows in --train or --eval (every row lacked text or label)")
    names = sorted(set(labels))
    if len(names) < 2:
        raise ConfigError(f"--label-column {cfg.label_column!r} has {len(names)} distinct value(s); need at least 2")
    label2id = {n: i for i, n in enumerate(names)}
    logger.info("training on %d rows (%d labels), dev %d rows, base %s", len(texts), len(names), len(dev_texts), base)

    config = BertConfig.from_pretrained(
        base,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id=label2id,
        exit_layers=list(cfg.exit_layers) if cfg.exit_layers else None,
        exit_policy=cfg.policy,
    )
    model = EarlyExitBertForSequenceClassification.from_pretrained(base, config=config)
    tokenizer = AutoTokenizer.from_pretrained(base)
    y = torch.tensor([label2id[v] for v in labels])
    t0 = time.perf_counter()
    losses: list[dict] = []

    stage1 = [p for n, p in model.named_parameters() if not n.startswith("exit_heads.")]
    if cfg.stage1_epochs > 0:
        model.train()
        _train_backbone(model, tokenizer, texts, y, cfg, stage1, losses)
    if len(model.exit_layers) > 1 and cfg.stage2_epochs > 0:
        features = pooled_features(model, tokenizer, texts, cfg.max_length).clone()  # leave inference mode
        with torch.enable_grad():
            _train_heads(model, features, y, cfg, losses)

    logits = all_head_logits(model, tokenizer, dev_texts, cfg.max_length)
    gold = np.array([label2id.get(v, -1) for v in dev_labels])  # unseen dev labels count as errors
    layer_acc = {l: float((logits[:, k].argmax(-1) == gold).mean()) for k, l in enumerate(model.exit_layers)}
    curve = T.sweep(logits, gold, model.exit_layers, policy)
    chosen = T.choose(curve, cfg.max_accuracy_drop)
    scores = T.head_scores(policy, logits)
    surv = T.survival(scores, logits.argmax(-1), model.exit_layers, policy, chosen["threshold"], model.num_layers)
    model.config.exit_thresholds = [chosen["threshold"]] * len(model.exit_layers)
    seconds = time.perf_counter() - t0
    logger.info(
        "dev: full-depth accuracy %.4f; threshold %.4g gives %.4f at %.2f mean layers (ideal %.2fx)",
        curve[0]["accuracy"], chosen["threshold"], chosen["accuracy"], chosen["mean_layers"], chosen["ideal_speedup"],
    )
    report = TrainReport(len(texts), len(dev_texts), seconds, layer_acc, curve, chosen, surv, losses)
    return model.eval(), tokenizer, report


def save_trained(model, tokenizer, report: TrainReport, output: str) -> None:
    """Save weights (safetensors), tokenizer, labels, heads, thresholds and the dev exit profile."""
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    model.save_profile(
        output,
        {
            "dev_survival": report.survival,
            "dev_layer_accuracy": {str(k): v for k, v in report.layer_accuracy.items()},
            "dev_curve": report.curve,
            "chosen": report.chosen,
            "train_rows": report.train_rows,
            "eval_rows": report.eval_rows,
            "train_seconds": report.seconds,
        },
    )
