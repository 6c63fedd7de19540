"""Fine-tuning a sequence-labeling early-exit model (Li et al., ACL 2021), then thresholds on dev.

Stage 1, joint fine-tuning: backbone and every token head on the layer-weighted average
of the heads' CE (weight l for layer l). Stage 2, self-sampling fine-tuning: per sentence
a random window and threshold; the forward halts words as TOKEE would (a halted word's
state is copied upward, later layers still attend to it) and each head's loss covers only
the words still active at its layer, so the heads learn on the inputs they will see.
Thresholds: one global threshold per exit mode swept over dev with the real TokenShard.
The task's own settings are TrainConfig's `token` section (TokenTrainOptions).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from datasets import LargeList, List, Sequence, load_dataset
from torch.nn import functional as F
from transformers import AutoTokenizer
from transformers.masking_utils import create_bidirectional_mask

from offramp.config import ConfigError, check_token_exit
from offramp.exits.token_pass import pad, tag_pass, word_head_logits, word_logits
from offramp.models.base import TOKEN
from offramp.models.checkpoint import exit_mechanism
from offramp.models.token import IGNORE, window_max, word_of_token
from offramp.policies import check_word_policy, get_policy
from offramp.quality import calibration
from offramp.quality.token_scores import score_pass
from offramp.quality.word_calibration import (
    WordCalibration,
    WordPass,
    WordTarget,
    certify_words,
    global_word_path,
    per_layer_word_path,
)
from offramp.text.words import EncodedWords, as_words, encode_words, split_words
from offramp.training.data import _BUILDERS
from offramp.training.loop import (
    TrainReport,
    _optimize,
    begin,
    exit_config,
    freeze_all_but_exit_heads,
    head_groups,
    held_out_slice,
    label_names,
    trainable_model,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenTrainOptions:
    """Token task (sequence labeling): the exit mode stored with the model and self-sampling fine-tuning."""

    exit_mode: str = "token"
    """Exit mode stored with the model: token (TOKEE) or sentence (SENTEE)."""
    sentence_pool: str = "max"
    """SENTEE: pool the words' uncertainty with max or mean."""
    exit_window: int = 0
    """TOKEE: a word halts when the max uncertainty over this many words on each side is low.
    0 (each word by its own head) saved 52% of token-layers within 0.5 point on debian_pos, the
    paper's window of 2 saved 36% (BENCHMARKS.md, "Where the saving goes")."""
    self_sampling_epochs: float = 1.0
    """Epochs of self-sampling fine-tuning after joint fine-tuning (stage1_epochs)."""
    sample_max_window: int = 3
    """Self-sampling: each sentence's window is drawn from 0..this."""
    sample_max_threshold: float = 0.4
    """Self-sampling: each sentence's threshold is drawn from U(0, this)."""

    def __post_init__(self):
        if self.self_sampling_epochs < 0 or self.sample_max_window < 0 or not 0 <= self.sample_max_threshold <= 1:
            raise ConfigError(
                "token.self_sampling_epochs and token.sample_max_window must be >= 0, "
                "token.sample_max_threshold in [0, 1]"
            )
        check_token_exit(self.exit_mode, self.sentence_pool, self.exit_window)

# normalized-uncertainty thresholds swept on dev (0 = only certain words leave, 1 = all at layer 1)
# finer where well-trained heads cross a 0.5-point budget (steps of 0.05 there moved the saving by 5-6 points)
# and around 0.5, where a max_prob word uncertainty crosses it (0.5 -> 0.55 cost 0.6 point on debian_pos)
SWEEP = (0.0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.225, 0.25, 0.275, 0.3, 0.325, 0.35, 0.375, 0.4, 0.45, 0.475, 0.5, 0.525,
         0.55, 0.575, 0.6, 0.7)
DEFAULT_WORD_POLICY = "max_prob"
"""Judges a word by 1 - its top tag's probability: at the same 0.5-point budget it saved 52% of
token-layers on debian_pos against 45% for normalized entropy (BENCHMARKS.md)."""


def _dataset(path: str, flag: str):
    if not os.path.exists(path):
        raise ConfigError(f"data file {path} not found; pass an existing file to {flag}")
    return load_dataset(_BUILDERS.get(os.path.splitext(path)[1].lower(), "parquet"), data_files=path, split="train")


def is_token_data(path: str, label_column: str) -> bool:
    """True when the training file's label column holds a list of tags per row (sequence labeling)."""
    ds = _dataset(path, "--train")
    if label_column not in ds.column_names:
        raise ConfigError(f"column {label_column!r} not found in {path}; columns are {ds.column_names}; set --label-column")
    return isinstance(ds.features[label_column], (List, Sequence, list, LargeList))


def load_tagged(path: str, words_column: str, tags_column: str, max_rows: int | None, seed: int, flag: str):
    """(sentences, tag lists) from Parquet/JSONL; rows without words or with a tag count that
    does not match their words are dropped (and counted in the log)."""
    ds = _dataset(path, flag)
    for col, option in ((words_column, "--text-column"), (tags_column, "--label-column")):
        if col not in ds.column_names:
            raise ConfigError(f"column {col!r} not found in {path}; columns are {ds.column_names}; set {option}")
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.shuffle(seed=seed).select(range(max_rows))
    sentences, tags, dropped = [], [], 0
    for w, t in zip(ds[words_column], ds[tags_column]):
        w, t = as_words(w), as_words(t)
        if not w or t is None or len(t) != len(w):
            dropped += 1
            continue
        sentences.append(w)
        tags.append(t)
    if dropped:
        logger.warning("%s: dropped %d rows without words or with tags not matching their words", path, dropped)
    return sentences, tags


def load_words(path: str, words_column: str, max_rows: int | None, seed: int, flag: str) -> list[list[str]]:
    """Sentences without tags (an agreement target needs none): a list of words per row, or a
    text split into words as the tagging pipeline splits it; rows without words are dropped."""
    ds = _dataset(path, flag)
    if words_column not in ds.column_names:
        raise ConfigError(f"column {words_column!r} not found in {path}; columns are {ds.column_names}; set --text-column")
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.shuffle(seed=seed).select(range(max_rows))
    sentences = [as_words(v) if not isinstance(v, str) else split_words(v) for v in ds[words_column]]
    return [w for w in sentences if w]


def word_labels(tags: list[list[str]], label2id: dict) -> list[np.ndarray]:
    """Per sentence (W,) label ids; -1 for a tag the model has no class for (counts as wrong)."""
    return [np.array([label2id.get(t, -1) for t in s], dtype=np.int64) for s in tags]


def _batch(encoded: list[EncodedWords], gold: list[np.ndarray], idx, device=None):
    """Sentences `idx` -> (ids, mask, lengths, starts, gold word labels), on `device` (the model's)."""
    ids, lengths, starts = pad([encoded[i] for i in idx])
    y = torch.full(starts.shape, IGNORE, dtype=torch.long)  # (B, W)
    for k, i in enumerate(idx):
        g = torch.from_numpy(gold[i])
        y[k, : len(g)] = torch.where((g >= 0) & (starts[k, : len(g)] >= 0), g, IGNORE)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return tuple(t.to(device, non_blocking=True) for t in (ids, mask, lengths, starts, y))


TOKEN_HEADS = ("exit_heads.", "classifier.")  # the heads a token model puts on its backbone


def joint_loss(model, batch) -> torch.Tensor:
    """Stage 1: every head on every word, CE averaged with weight l for layer l."""
    ids, mask, _, starts, y = batch
    states = model.layer_states(ids, mask)
    C, w = model.config.num_labels, [float(l) for l in model.exit_layers]
    losses = [F.cross_entropy(word_logits(model, l, states[l], starts).reshape(-1, C), y.reshape(-1),
                              ignore_index=IGNORE)
              for l in model.exit_layers]
    return sum(a * b for a, b in zip(w, losses)) / sum(w)


def self_sampling_loss(model, batch, rng: random.Random, max_window: int, max_threshold: float) -> torch.Tensor:
    """Stage 2: halt words as TOKEE would with a window and threshold drawn per sentence; each
    head's CE only on words not halted below it; layer-weighted like stage 1. A word's
    uncertainty is the stored policy's, as at inference."""
    uncertainty = get_policy(model.config.exit_policy).word_uncertainty
    ids, mask, lengths, starts, y = batch
    B, T = ids.shape
    windows = torch.tensor([rng.randint(0, max_window) for _ in range(B)], device=ids.device)  # (B,)
    thresh = torch.tensor([rng.uniform(0.0, max_threshold) for _ in range(B)], device=ids.device)  # (B,)
    valid = (starts >= 0) & (y != IGNORE)  # (B, W) words that have a label
    owner = word_of_token(starts, lengths, T)  # (B, T)
    real = mask.bool()
    hidden = model.embed(ids)
    ext = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
    active = valid.clone()  # (B, W)
    num = den = 0.0
    for i, layer in enumerate(model.encoder_layers):
        number = i + 1
        tok = torch.gather(active, 1, owner.clamp(min=0)) & (owner >= 0)
        tok = real & (tok | ((owner < 0) & active.any(1, keepdim=True)))  # (B, T) tokens still computed
        hidden = torch.where(tok[..., None], layer(hidden, ext), hidden)
        if number not in model.exit_layers:
            continue
        logits = word_logits(model, number, hidden, starts)  # (B, W, C)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.clamp(min=0).reshape(-1), reduction="none")
        on = active.reshape(-1).float()
        num, den = num + number * (ce * on).sum(), den + number * on.sum()
        if number == model.num_layers:
            break
        with torch.no_grad():
            u = uncertainty(logits)  # (B, W)
            wm = torch.stack([window_max(u, valid, int(k)) for k in range(max_window + 1)])  # (K+1, B, W)
            wm = wm[windows, torch.arange(B, device=ids.device)]  # (B, W) each sentence with its own window
            active = active & ~(wm < thresh[:, None])
    return num / torch.clamp(torch.as_tensor(den), min=1.0)  # a tensor: no wait for the device per step


def sweep_thresholds(model, encoded, gold, names, mode: str) -> list[dict]:
    """Dev curve of one exit mode: full depth first, then each SWEEP threshold (the global path)."""
    return path_curve(model, encoded, gold, names, mode, global_word_path(SWEEP, len(model.exit_layers)))


def choose(curve: list[dict], max_drop: float) -> dict:
    """The cheapest point whose quality is within max_drop of full depth (full depth if none).
    Quality: entity F1 for BIO tag sets (word accuracy is mostly the O tag there), else word accuracy."""
    key = "f1" if "f1" in curve[0] else "accuracy"
    ok = [p for p in curve[1:] if p[key] >= curve[0][key] - max_drop]
    return min(ok, key=lambda p: p["token_layers"]) if ok else curve[0]


def head_accuracy(exit_layers: list[int], tags: list[np.ndarray], gold: list[np.ndarray]) -> dict[int, float]:
    """{exit layer: word accuracy of its head} from every head's tags per sentence ((K, W): a word
    cut by max_length has no tag, and counts as wrong)."""
    right, total = np.zeros(len(exit_layers)), 0
    for t, g in zip(tags, gold):
        w = min(t.shape[1], len(g))
        right += ((t[:, :w] == g[None, :w]) & (g[None, :w] >= 0)).sum(1)
        total += int((g >= 0).sum())
    return {l: float(r) / max(total, 1) for l, r in zip(exit_layers, right)}


def sentence_survival(model, encoded, mode: str, threshold) -> list[float]:
    """Share of sentences still running entering each layer (for the pipeline's balanced layout)."""
    done = WordPass.of(tag_pass(model, encoded, mode, threshold)).finished  # (N,)
    return [float((done >= layer).mean()) for layer in range(1, model.num_layers + 1)]


def token_conditions(config) -> dict:
    """How a token model's words leave: a run with another mode, window or pooling runs other
    exits than the certified ones (offramp.quality.certificate compares)."""
    return {"token_exit_mode": config.token_exit_mode, "exit_window": int(config.exit_window),
            "sentence_pool": config.sentence_pool}


PER_LAYER_ALPHAS = np.concatenate([[0.0], np.geomspace(0.002, 0.3, 19)])
"""The per-layer path's alpha grid (the share of a head's halted words allowed to disagree with
full depth on the family sentences), fixed in advance; row 0 never exits."""
WORD_PATHS = ("auto", "per-layer", "global")


def head_tags(model, encoded) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sentence (K, W) tags and (K, W) normalized uncertainties of every exit head, from
    one full-depth pass."""
    uncertainty = get_policy(model.config.exit_policy).word_uncertainty
    logits = word_head_logits(model, encoded)
    return [lg.argmax(-1) for lg in logits], [uncertainty(torch.from_numpy(lg)).numpy() for lg in logits]


def candidate_points(model, encoded, gold, names, mode: str, path: calibration.ThresholdPath,
                     window: int | None = None) -> list[dict]:
    """One real pass per candidate of `path` (row 0, never-exit, left out), scored by score_pass;
    window None: the model's stored window."""
    key = "threshold" if path.name == "global" else "alpha"
    points = []
    for row, param in zip(path.thresholds[1:], path.params[1:]):
        thresholds = [float(t) for t in row]
        s = score_pass(tag_pass(model, encoded, mode, thresholds, window=window), gold, names, model.num_layers)
        s.pop("entity", None)
        points.append({key: float(param), "thresholds": thresholds, **s})
    return points


def path_curve(model, encoded, gold, names, mode: str, path: calibration.ThresholdPath) -> list[dict]:
    """Dev curve along a threshold path: full depth first, then each candidate (score_pass figures)."""
    full = score_pass(tag_pass(model, encoded, mode, None), gold, names, model.num_layers)
    full.pop("entity", None)
    return [{"threshold" if path.name == "global" else "alpha": None, **full},
            *candidate_points(model, encoded, gold, names, mode, path)]


def check_word_path(path: str, mode: str) -> None:
    """A token model's threshold path exists for its exit mode (ConfigError naming the fix)."""
    if path not in WORD_PATHS:
        raise ConfigError(f"path {path!r}: use one of {WORD_PATHS}")
    if path == "per-layer" and mode != "token":
        raise ConfigError(f"the per-layer path halts words by their own heads: it needs token exit mode, not {mode!r}; "
                          "use --path global (or auto)")


def word_paths(model, family_enc, family_gold, names, mode: str, target: WordTarget, path: str = "auto",
               global_curve: list[dict] | None = None,
               heads=None) -> tuple[calibration.ThresholdPath, dict[str, list[dict]]]:
    """The path to certify along, chosen on the family sentences alone (never the certifying
    ones), and the family curves run to choose it. per-layer is shaped on the family's heads
    (token mode only: a sentence-mode exit pools the words' uncertainty); auto runs both paths on
    the family and takes the one that saves more token-layers within the target (word accuracy
    against gold, or against the full-depth tags for an agreement target). global_curve: the
    global path's family curve and heads = head_tags(model, family_enc), when the caller has them."""
    check_word_path(path, mode)
    glob = global_word_path(SWEEP, len(model.exit_layers))
    if path == "global" or mode != "token" or not family_enc:
        if path == "per-layer":
            raise ConfigError("the per-layer path needs family sentences (a training run's dev slice, or a share of "
                              "the calibration set): raise the family fraction or use --path global")
        return glob, {}
    tags, unc = heads or head_tags(model, family_enc)
    per = per_layer_word_path(tags, unc, PER_LAYER_ALPHAS)
    if path == "per-layer":
        return per, {}
    if target.mode == "agreement":  # agreement with full depth is accuracy against the full-depth tags
        family_gold = [t[-1].astype(np.int64) for t in tags]
        names = []
    max_drop = target.value if target.mode == "accuracy" else 1 - target.value
    curves = {"global": global_curve or path_curve(model, family_enc, family_gold, names, mode, glob),
              "per-layer": path_curve(model, family_enc, family_gold, names, mode, per)}
    saving = {name: choose(c, max_drop)["token_layer_saving"] for name, c in curves.items()}
    logger.info("threshold path: %d family sentences, within the target the global path saves %.1f%% of token-layers, "
                "the per-layer path %.1f%%", len(family_enc), 100 * saving["global"], 100 * saving["per-layer"])
    return (per if saving["per-layer"] > saving["global"] else glob), curves


def certify_thresholds(model, encoded, gold, mode: str, target: WordTarget, seed: int = 0,
                       path: calibration.ThresholdPath | None = None, family_sentences: int = 0) -> WordCalibration:
    """Learn then Test along `path` (default: the sweep's global thresholds) in `mode` on labeled
    sentences (gold None: an agreement target), one real pass per candidate
    (offramp.quality.word_calibration)."""
    full = WordPass.of(tag_pass(model, encoded, mode, None))
    path = global_word_path(SWEEP, len(model.exit_layers)) if path is None else path
    return certify_words(path, lambda t: WordPass.of(tag_pass(model, encoded, mode, t)), full, gold, target,
                         model.num_layers, seed, family_sentences)


def certify_stored(model, cal_enc, cal_gold, mode: str, cfg, target: WordTarget, path: calibration.ThresholdPath,
                   family_sentences: int) -> WordCalibration | None:
    """The held-out slice's certificate of the thresholds to store (for `target`, training's
    max_accuracy_drop at its confidence), along `path`, or None (with a warning that names the
    fix) when there is no slice or no exiting candidate passes."""
    if not cal_enc or cfg.max_accuracy_drop <= 0:
        logger.warning("stored thresholds are UNCERTIFIED (calibration_fraction=%s, max_accuracy_drop=%s): "
                       "retrain with calibration_fraction > 0 or certify with jobs/calibrate.py",
                       cfg.held_out_fraction(TOKEN), cfg.max_accuracy_drop)
        return None
    result = certify_thresholds(model, cal_enc, cal_gold, mode, target, cfg.seed, path, family_sentences)
    if not result.certified:
        logger.warning("no exiting threshold could be certified for '%s' at confidence %.2f on %d held-out sentences: "
                       "the stored thresholds are UNCERTIFIED (dev-chosen); add eval sentences, raise "
                       "calibration_fraction, or run jobs/calibrate.py on more sentences",
                       target.describe(), target.confidence, result.sentences)
        return None
    p = result.point
    logger.info("certified on %d held-out sentences: %s at confidence %.2f; %s saves %.1f%% of token-layers "
                "(ideal %.2fx), word accuracy drop %.2f pt (per sentence %.2f pt, bound %.2f pt)", result.sentences,
                target.describe(), target.confidence, result.describe_thresholds(), 100 * p["token_layer_saving"],
                p["ideal_speedup"], 100 * p["accuracy_drop"], 100 * p["risk"], 100 * result.risk_bound)
    return result


def train_token_exits(cfg):
    """Fine-tune a token early-exit model (cfg: offramp.training.TrainConfig, its `token`
    section); return (model, tokenizer, TrainReport)."""
    base = begin(cfg)
    opts = cfg.token
    if cfg.policy == "auto":
        raise ConfigError("policy=auto is for classifiers; a token model stores one per-word policy: "
                          f"drop --set policy=auto (default {DEFAULT_WORD_POLICY}) or name one")
    policy_name = cfg.policy or DEFAULT_WORD_POLICY  # stored with the model: it decides per word at inference
    check_word_policy(get_policy(policy_name))
    sents, tags = load_tagged(cfg.train, cfg.text_column, cfg.label_column, cfg.max_train_rows, cfg.seed, "--train")
    dev_sents, dev_tags = load_tagged(cfg.eval, cfg.text_column, cfg.label_column, cfg.max_eval_rows, cfg.seed, "--eval")
    if not sents or not dev_sents:
        raise ConfigError("no usable rows in --train or --eval (every row lacked words or matching tags)")
    names = label_names(cfg, {t for s in tags for t in s}, TOKEN)
    label2id = {n: i for i, n in enumerate(names)}
    config = exit_config(
        base, names, cfg, exit_policy=policy_name, token_exit_mode=opts.exit_mode,
        sentence_pool=opts.sentence_pool, exit_window=opts.exit_window,
    )
    device = cfg.torch_device()
    model = trainable_model(TOKEN, config, base, device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    logger.info("training token model on %d sentences (%d tags), dev %d, base %s", len(sents), len(names), len(dev_sents), base)
    encoded, gold = encode_words(tokenizer, sents, cfg.max_length), word_labels(tags, label2id)
    losses: list[dict] = []
    t0 = time.perf_counter()
    model.train()
    n = len(encoded)
    # --heads-only: the tagger's backbone and classifier stay as they are; both stages train the exit heads
    # otherwise every head (exit heads and the final classifier, all fresh from a sentence encoder) at head_lr
    params = freeze_all_but_exit_heads(model) if cfg.heads_only else head_groups(model, cfg, TOKEN_HEADS)
    _optimize(params, n, cfg, cfg.stage1_epochs, cfg.head_lr, 1,
              lambda idx: joint_loss(model, _batch(encoded, gold, idx, device)), losses, clip=1.0)
    rng = random.Random(cfg.seed)
    _optimize(params, n, cfg, opts.self_sampling_epochs, cfg.head_lr, 2,
              lambda idx: self_sampling_loss(model, _batch(encoded, gold, idx, device), rng, opts.sample_max_window,
                                             opts.sample_max_threshold), losses, clip=1.0)
    model.eval()

    dev_enc, dev_gold = encode_words(tokenizer, dev_sents, cfg.max_length), word_labels(dev_tags, label2id)
    cal_idx, dev_idx = held_out_slice(len(dev_enc), cfg.held_out_fraction(TOKEN), cfg.seed)
    cal_enc, cal_gold = [dev_enc[i] for i in cal_idx], [dev_gold[i] for i in cal_idx]
    dev_enc, dev_gold = [dev_enc[i] for i in dev_idx], [dev_gold[i] for i in dev_idx]
    curves = {mode: sweep_thresholds(model, dev_enc, dev_gold, names, mode) for mode in ("token", "sentence")}
    mode = opts.exit_mode
    heads = head_tags(model, dev_enc)  # every head on the dev words: per-layer accuracy, the per-layer path's shape
    target = WordTarget("accuracy", cfg.max_accuracy_drop, cfg.confidence)
    path, family_curves = word_paths(model, dev_enc, dev_gold, names, mode, target, "auto", curves[mode], heads)
    if "per-layer" in family_curves:
        curves["token_per_layer"] = family_curves["per-layer"]
    chosen = {m: choose(c, cfg.max_accuracy_drop) for m, c in curves.items()}
    dev_key, K = mode if path.name == "global" else "token_per_layer", len(model.exit_layers)
    c = chosen[dev_key]  # the dev-chosen point on the path certified: stored when nothing can be certified
    stored = c["thresholds"] if "thresholds" in c else [-1.0 if c.get("threshold") is None else c["threshold"]] * K
    result = certify_stored(model, cal_enc, cal_gold, mode, cfg, target, path,
                            len(dev_enc) if path.name == "per-layer" else 0)
    record = None
    if result is not None:
        stored = result.thresholds
        record = {**result.record(), "data": "held-out slice of --eval",
                  **calibration.conditions(policy_name, exit_mechanism(model.config), cfg.max_length),
                  **token_conditions(model.config)}
    model.config.exit_thresholds = [float(t) for t in stored]
    model.config.exit_certified = record is not None
    layer_acc = head_accuracy(model.exit_layers, heads[0], dev_gold)
    survival = record["survival"] if record else sentence_survival(model, dev_enc, mode, stored)
    seconds = time.perf_counter() - t0
    key = "f1" if "f1" in c else "accuracy"
    logger.info("dev (%s, %s path): full-depth %s %.4f; %s gives %.4f saving %.1f%% of token-layers (ideal %.2fx)",
                mode, path.name, key, curves[dev_key][0][key],
                f"threshold {c['threshold']}" if "alpha" not in c else f"alpha {c['alpha']}", c[key],
                100 * c["token_layer_saving"], c["ideal_speedup"])
    report = TrainReport(TOKEN, len(sents), len(dev_enc), seconds, layer_acc, curves[dev_key], c, survival, losses,
                         task_curves=curves, task_chosen=chosen, calibration=record)
    return model, tokenizer, report

