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
from offramp.modeling import EarlyExitBertForSequenceClassification, default_base_model
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


def _train_stage(model, tokenizer, texts, y, cfg: TrainConfig, params, epochs: float, lr: float, stage: int, losses):
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = max(1, int(round(steps_per_epoch * epochs)))
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    warmup = int(total * cfg.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    rng = random.Random(cfg.seed + stage)
    progress = _Progress(f"stage {stage}", total)
    step = 0
    L = model.num_layers
    while step < total:
        for idx in _batches(len(texts), cfg.batch_size, rng):
            enc = _encode(tokenizer, [texts[i] for i in idx], cfg.max_length)
            labels = y[idx]
            if stage == 1:
                h = model.bert(**enc).last_hidden_state  # (B, T, H)
                loss = nn.functional.cross_entropy(model.head_logits(L, h), labels)
            else:
                with torch.no_grad():
                    states = model.bert(**enc, output_hidden_states=True).hidden_states
                loss = sum(
                    nn.functional.cross_entropy(model.head_logits(l, states[l]), labels) for l in model.exit_layers[:-1]
                )
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            step += 1
            value = loss.item()
            losses.append({"stage": stage, "step": step, "loss": value})
            progress.step(step, value)
            if step >= total:
                break


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

    model.train()
    stage1 = [p for n, p in model.named_parameters() if not n.startswith("exit_heads.")]
    _train_stage(model, tokenizer, texts, y, cfg, stage1, cfg.stage1_epochs, cfg.lr, 1, losses)
    for p in stage1:
        p.requires_grad_(False)
    heads = list(model.exit_heads.parameters())
    if heads:
        _train_stage(model, tokenizer, texts, y, cfg, heads, cfg.stage2_epochs, cfg.head_lr, 2, losses)
    for p in model.parameters():
        p.requires_grad_(True)

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
