"""Training an early-exit classifier (one label per row) with the mechanism cfg.mechanism names,
then its thresholds on the dev set.

The mechanism (offramp.training.mechanisms: deebert, pabee, berxit, de3, smartbert) owns the
recipe; this driver picks it from the registry, builds the model with the modules it needs,
lets it train, and measures the dev set at full depth once: per-layer accuracy, the accuracy /
mean-layers curve of the stored policy, and the fastest threshold within max_accuracy_drop.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch
from transformers import AutoTokenizer

from offramp.config import ConfigError
from offramp.exits import simulate
from offramp.models.base import SEQUENCE
from offramp.models.checkpoint import resolve_final_pooling
from offramp.policies import candidate_policies, check_policy_fits, get_policy
from offramp.quality import calibration
from offramp.quality.stats import rows_needed
from offramp.training.data import load_labeled
from offramp.training.loop import (TrainReport, TrainRun, begin, exit_config, full_pass, held_out_slice, label_names,
                                   refit_final_head, trainable_model)
from offramp.training.mechanisms import get_mechanism

logger = logging.getLogger(__name__)


def train_sequence_exits(cfg):
    """Fine-tune an early-exit classifier with cfg.mechanism (cfg: offramp.training.TrainConfig);
    return (model, tokenizer, TrainReport)."""
    base = begin(cfg)
    mechanism = get_mechanism(cfg.mechanism)
    policy_name = mechanism.policy if cfg.policy in (None, "auto") else cfg.policy
    policy = get_policy(policy_name)
    check_policy_fits(policy, mechanism.name, set(mechanism.signal_modules))
    # auto: every policy the model can run is tried on the dev rows, the fastest certified
    candidates = {policy_name: policy}
    if cfg.policy == "auto":
        candidates = candidate_policies(policy_name, set(mechanism.signal_modules))
    texts, labels = load_labeled(cfg.train, cfg.text_column, cfg.label_column, cfg.max_train_rows, cfg.seed)
    dev_texts, dev_labels = load_labeled(cfg.eval, cfg.text_column, cfg.label_column, cfg.max_eval_rows, cfg.seed)
    if len(texts) == 0 or len(dev_texts) == 0:
        raise ConfigError("no usable rows in --train or --eval (every row lacked text or label)")
    if cfg.heads_only:
        logger.info("--heads-only: %s keeps its backbone, classifier and labels; only the exit heads train", base)
        cfg = dataclasses.replace(cfg, stage1_epochs=0.0, final_pooling="cls")
    names = label_names(cfg, set(labels))
    if len(names) < 2:
        raise ConfigError(f"--label-column {cfg.label_column!r} has {len(names)} distinct value(s); need at least 2")
    label2id = {n: i for i, n in enumerate(names)}
    logger.info(
        "training %s on %d rows (%d labels), dev %d rows, %s %s",
        mechanism.name, len(texts), len(names), len(dev_texts), "warm start from" if cfg.init_from else "base", base,
    )
    pooling = resolve_final_pooling(cfg.final_pooling, base)
    config = exit_config(
        base, names, cfg, exit_policy=policy_name, exit_mechanism=mechanism.name, final_pooling=pooling,
        **mechanism.config_fields(cfg),
    )
    device = cfg.torch_device()
    model = trainable_model(SEQUENCE, config, base, device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    y = torch.tensor([label2id[v] for v in labels], device=device)  # TrainRun.encode follows y's device
    t0 = time.perf_counter()
    run = TrainRun(model, tokenizer, texts, y, cfg, [])
    mechanism.train(run)
    refit = refit_final_head(run, run.final_features)
    run.final_features = None  # the cache is not kept with the model
    model.eval()

    hp_all = full_pass(model, tokenizer, dev_texts, cfg.max_length)
    gold_all = np.array([label2id.get(v, -1) for v in dev_labels])  # unseen dev labels count as errors
    cal_idx, dev_idx = held_out_slice(len(dev_texts), cfg.held_out_fraction(SEQUENCE), cfg.seed)
    hp, gold = hp_all[dev_idx], gold_all[dev_idx]
    layer_acc = {l: float((hp.logits[:, k].argmax(-1) == gold).mean()) for k, l in enumerate(model.exit_layers)}
    curve = simulate.sweep(hp, gold, model.exit_layers, policy)
    chosen = simulate.choose(curve, cfg.max_accuracy_drop)
    stored = [chosen["threshold"]] * len(model.exit_layers)
    record = certify_stored(hp_all[cal_idx], gold_all[cal_idx], (hp, gold), candidates, model, mechanism.name, cfg)
    if record is not None:
        stored, surv = record["thresholds"], record["survival"]
        model.config.exit_policy = record["policy"]
    else:
        scores = simulate.head_scores(policy, hp, model.exit_layers)
        surv = simulate.survival(scores, hp.preds, model.exit_layers, policy, chosen["threshold"], model.num_layers)
    model.config.exit_thresholds = [float(t) for t in stored]
    model.config.exit_certified = record is not None
    model.to("cpu")  # saved and handed on as a CPU model, wherever it trained
    seconds = time.perf_counter() - t0
    logger.info(
        "dev: full-depth accuracy %.4f; threshold %.4g gives %.4f at %.2f mean layers (ideal %.2fx)",
        curve[0]["accuracy"], chosen["threshold"], chosen["accuracy"], chosen["mean_layers"], chosen["ideal_speedup"],
    )
    skip_rate = [float(r) for r in hp.skipped.mean(0)] if hp.skipped is not None else None
    return model, tokenizer, TrainReport(
        SEQUENCE, len(texts), len(dev_idx), seconds, layer_acc, curve, chosen, surv, run.losses, skip_rate,
        calibration=record, final_head_refit=refit,
    )


def certify_stored(hp_cal, gold_cal, dev, policies: dict, model, mechanism: str, cfg) -> dict | None:
    """Certify the thresholds to store on the held-out slice (the dev rows shape the per-layer
    path, and choose among `policies` when there are several): the certificate record, or None
    (with a warning naming the fix) when there is none."""
    if len(hp_cal) == 0 or cfg.max_accuracy_drop <= 0:
        logger.warning("stored thresholds are UNCERTIFIED (calibration_fraction=%s, max_accuracy_drop=%s): "
                       "certify them with jobs/calibrate.py", cfg.held_out_fraction(SEQUENCE), cfg.max_accuracy_drop)
        return None
    target = calibration.Target("accuracy", cfg.max_accuracy_drop, cfg.confidence)
    choice = calibration.certify_policies(hp_cal, gold_cal, policies, model.exit_layers, target, "auto", family=dev)
    result = choice.calibration
    if not result.certified:
        need = rows_needed(target.max_risk, target.delta, target.mode)
        logger.warning(
            "no exiting threshold could be certified for '%s' at confidence %.2f on %d held-out rows (even zero "
            "errors need %d): the stored thresholds are UNCERTIFIED; add eval rows, raise calibration_fraction, or "
            "run jobs/calibrate.py on more rows", target.describe(), target.confidence, len(hp_cal), need,
        )
        return None
    record = {**result.record(), "data": "held-out slice of --eval",
              **calibration.conditions(choice.policy, mechanism, cfg.max_length)}
    logger.info(
        "certified on %d held-out rows (%s, %s path): %s at confidence %.2f; %.2f mean layers (ideal %.2fx), "
        "drop %.2f pt (bound %.2f pt)", result.rows, choice.policy, result.path, target.describe(), target.confidence,
        record["mean_layers"], record["ideal_speedup"], 100 * (record["accuracy_full_depth"] - record["accuracy"]),
        100 * record["risk_bound"],
    )
    return record
