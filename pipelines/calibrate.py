"""What `jobs/calibrate.py` does: one full-depth pass, certify, write, log to MLflow.

A model directory is calibrated in place. A registered version (models:/NAME/3, models:/NAME@ALIAS)
is calibrated in a copy, which is registered as the model's next version with the certificate as
its tags and the calibration run as its run; the source version is left as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from transformers import AutoTokenizer

from offramp.config import CalibrateConfig, ConfigError
from offramp.models.base import TOKEN
from offramp.models.checkpoint import ModelInfo, read_config
from offramp.models.profile import load_profile, save_profile
from offramp.policies import ExitPolicy, candidate_policies, check_policy_fits, get_policy
from offramp.quality import calibration
from offramp.quality.stats import rows_needed
from offramp.quality.word_calibration import WordCalibration, WordTarget
from offramp.text.words import encode_words
from offramp.training.data import load_labeled
from offramp.training.loop import calibration_model, head_logits_for
from offramp.training.token import (
    certify_thresholds,
    check_word_path,
    load_tagged,
    load_words,
    token_conditions,
    word_labels,
    word_paths,
)
from pipelines.figures import tradeoff_figure
from pipelines.registry import RegisteredModel, certificate_tags, is_registered, link_run, register_model_dir, resolve
from pipelines.tracking import start_run

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    calibration: calibration.Calibration
    summary: str  # one paragraph for the terminal
    written: bool
    run_id: str
    registered: str = ""  # the version registered from the calibrated model, models:/NAME/VERSION


def write_calibration(model_dir: str, result: calibration.Calibration, record: dict) -> None:
    """Store the certified thresholds in config.json (marked certified) and `record` (the
    certificate and the conditions it was made under) in exit_profile.json.

    The stored survival becomes the calibrated one, so stage layouts are planned for the
    thresholds that will actually run."""
    if not result.certified:
        raise ValueError("nothing certified: refusing to overwrite the model's thresholds")
    write_record(model_dir, record)


def write_record(model_dir: str, record: dict) -> None:
    """The certificate `record` into the model: its thresholds into config.json, marked certified,
    and the record (with the calibrated survival) into exit_profile.json."""
    cfg = read_config(model_dir)
    cfg.exit_policy = record.get("policy", cfg.exit_policy)
    cfg.exit_thresholds = [float(t) for t in record["thresholds"]]
    cfg.exit_certified = True
    cfg.save_pretrained(model_dir)
    profile = load_profile(model_dir)
    profile["calibration"] = record
    save_profile(model_dir, profile)


def _target(cfg: CalibrateConfig) -> calibration.Target:
    if cfg.max_accuracy_drop is not None:
        if not cfg.label_column:
            raise ConfigError("--max-accuracy-drop needs gold labels: pass --label-column, or use --min-agreement")
        return calibration.Target("accuracy", cfg.max_accuracy_drop, cfg.confidence)
    return calibration.Target("agreement", cfg.min_agreement, cfg.confidence)


def certificate_record(result: calibration.Calibration, info: ModelInfo, max_length: int, source: str,
                       policy: str, dtype: str) -> dict:
    """The certificate, with the conditions it holds under (offramp.quality.certificate)."""
    return {**result.record(), "data": source, **calibration.conditions(policy, info.mechanism, max_length, dtype)}


def calibration_policies(name: str, info: ModelInfo) -> dict[str, ExitPolicy]:
    """The candidates `--policy` names: every policy the model can run (auto), its own (stored),
    or one named policy, which must fit the model."""
    if name == "auto":
        return candidate_policies(info.policy, info.signal_modules)
    policy = get_policy(info.policy if name == "stored" else name)
    check_policy_fits(policy, info.mechanism, set(info.signal_modules))
    return {policy.name: policy}


def run_calibration(cfg: CalibrateConfig) -> Outcome:
    """Certify thresholds for cfg's target: into the model directory, or for a models:/ model into a
    copy registered as the next version (of cfg.register if given, else of the model's own name)."""
    cfg.require("model", "data")
    if not is_registered(cfg.model):
        return calibrate_dir(cfg, None, cfg.register)
    source = resolve(cfg.model, cfg.mlflow)
    with tempfile.TemporaryDirectory(prefix="offramp-calibrate-") as work:
        copy = shutil.copytree(source.path, os.path.join(work, "model"))  # the cached version stays as it was
        return calibrate_dir(dataclasses.replace(cfg, model=copy), source, cfg.register or source.name)


def calibrate_dir(cfg: CalibrateConfig, source: RegisteredModel | None, register: str | None) -> Outcome:
    """Calibrate the directory cfg.model; with `register`, log it as that model's next version.
    `source`: the registered version cfg.model is a copy of, if it is one."""
    target = _target(cfg)
    info = ModelInfo.read(cfg.model)
    if info.task == TOKEN:
        return calibrate_token_dir(cfg, info, target, source, register)
    policies = calibration_policies(cfg.policy, info)
    if cfg.path == "per-layer" and len(policies) == 1 and next(iter(policies.values())).state_size:
        raise ConfigError(f"exit policy {next(iter(policies))!r} carries state across layers: "
                          "use --path global (or auto)")
    texts, labels = load_labeled(cfg.data, cfg.text_column, cfg.label_column, cfg.max_rows, cfg.seed, flag="--data")
    if not texts:
        raise ConfigError(f"{cfg.data} has no usable rows (every row lacked text{' or label' if cfg.label_column else ''})")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    logger.info("calibration: %d rows, target: %s at confidence %.2f", len(texts), target.describe(), cfg.confidence)
    logits = head_logits_for(cfg.model, texts, cfg.max_length, cfg.batch_size, cfg.dtype)
    gold = None
    if labels is not None:
        label2id = {name: i for i, name in enumerate(info.labels)}
        gold = np.array([label2id.get(v, -1) for v in labels])  # unseen labels count as errors
    choice = calibration.certify_policies(
        logits, gold, policies, info.exit_layers, target, cfg.path, cfg.family_fraction, cfg.seed, cfg.points
    )
    result = choice.calibration
    seconds = time.perf_counter() - t0
    written = result.certified and not cfg.dry_run
    record = None
    if result.certified:
        record = certificate_record(result, info, cfg.max_length, os.path.abspath(cfg.data), choice.policy, cfg.dtype)
    if written:
        write_calibration(cfg.model, result, record)
    run_id, registered = log_and_register(cfg, record, written, source, register,
                                          lambda: log_calibration(cfg, result, record, seconds, source, choice))
    summary = _summary(cfg, result, record, written, run_id, registered, describe_choice(choice, info.policy))
    return Outcome(result, summary, written, run_id, registered)


def log_and_register(cfg: CalibrateConfig, record: dict | None, written: bool, source: RegisteredModel | None,
                     register: str | None, log) -> tuple[str, str]:
    """The calibration's MLflow run (`log()` logs inside it) and, when the certificate was
    written and `register` is given, the model's next version with this run as its run:
    (run id, models:/NAME/VERSION), empty strings for what did not happen."""
    run_id, registered = "", ""
    if cfg.mlflow.enabled:
        with start_run(cfg.mlflow, "offramp-calibrate") as run:
            run_id = run.info.run_id
            if source is not None:
                link_run(source)
            log()
            if written and register:  # the version's run is this calibration run
                tags = {**certificate_tags(record), "offramp.calibrated_from": source.uri if source else cfg.model}
                version = register_model_dir(cfg.model, register, cfg.max_length, tags)
                registered = f"models:/{register}/{version.version}"
    return run_id, registered


def calibrate_token_dir(cfg: CalibrateConfig, info: ModelInfo, target: calibration.Target,
                        source: RegisteredModel | None, register: str | None) -> Outcome:
    """A token model: its thresholds certified along a path on tagged sentences (accuracy) or
    on sentences alone (agreement), one real pass per candidate (offramp.quality.word_calibration).
    A per-layer path (or auto, which compares both) is shaped on a seeded family_fraction of the
    sentences, kept apart from the certifying rest."""
    if cfg.label_column:
        sentences, tags = load_tagged(cfg.data, cfg.text_column, cfg.label_column, cfg.max_rows, cfg.seed, "--data")
    else:
        sentences, tags = load_words(cfg.data, cfg.text_column, cfg.max_rows, cfg.seed, "--data"), None
    if not sentences:
        raise ConfigError(f"{cfg.data} has no usable sentences (every row lacked words{' or matching tags' if tags else ''})")
    if cfg.policy not in ("auto", "stored", info.policy):
        raise ConfigError(f"a token model is certified for the policy it was trained with ({info.policy}): drop "
                          f"--policy {cfg.policy}, or retrain with --set policy={cfg.policy}")
    mode = info.token_exit_mode or "token"
    check_word_path(cfg.path, mode)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    model = calibration_model(cfg.model, cfg.dtype)  # each candidate's real pass runs there
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    encoded = encode_words(tokenizer, sentences, cfg.max_length)
    gold = word_labels(tags, {name: i for i, name in enumerate(info.labels)}) if tags else None
    word_target = WordTarget(target.mode, target.value, target.confidence)
    fam = []
    if cfg.path != "global" and mode == "token":
        fam, cert = calibration.family_split(len(encoded), cfg.family_fraction, cfg.seed)
        family = [encoded[i] for i in fam], None if gold is None else [gold[i] for i in fam]
        encoded, gold = [encoded[i] for i in cert], None if gold is None else [gold[i] for i in cert]
    logger.info("calibration: %d sentences%s, target: %s at confidence %.2f", len(encoded),
                f" (and {len(fam)} shaping the path)" if len(fam) else "", word_target.describe(), cfg.confidence)
    with torch.no_grad():
        path = None
        if len(fam):
            path, _ = word_paths(model, family[0], family[1], info.labels, mode, word_target, cfg.path)
        result = certify_thresholds(model, encoded, gold, mode, word_target, cfg.seed, path,
                                    len(fam) if path is not None and path.name == "per-layer" else 0)
    seconds = time.perf_counter() - t0
    written = result.certified and not cfg.dry_run
    record = None
    if result.certified:
        record = {**result.record(), "data": os.path.abspath(cfg.data),
                  **calibration.conditions(info.policy, info.mechanism, cfg.max_length, cfg.dtype),
                  **token_conditions(model.config)}
    if written:
        write_record(cfg.model, record)
    run_id, registered = log_and_register(cfg, record, written, source, register,
                                          lambda: log_word_calibration(cfg, result, record, seconds, source))
    t, p = result.target, result.point
    if not result.certified:
        summary = (f"no exiting threshold could be certified for '{t.describe()}' at confidence {t.confidence:.2f} with "
                   f"{result.sentences} sentences; the model is unchanged: add sentences, loosen the target or lower "
                   "--confidence.")
    else:
        summary = (f"{result.describe_thresholds()} ({where_written(cfg, written, registered)}): on {result.sentences} "
                   f"sentences, {100 * p['token_layer_saving']:.1f}% of token-layers saved (ideal {p['ideal_speedup']:.2f}x), "
                   f"word agreement {p['agreement']:.4f} (per sentence, lower bound {result.agreement_lower:.4f})")
        if "accuracy" in p:
            summary += (f", word accuracy {p['accuracy']:.4f} vs {p['accuracy_full_depth']:.4f} at full depth (per-sentence "
                        f"drop {100 * p['risk']:.2f} pt, bound {100 * result.risk_bound:.2f} pt)")
        summary += (f"; guarantee: {t.describe()} with probability >= {t.confidence:.2f}, for runs at max_length "
                    f"{cfg.max_length} in {cfg.dtype}")
        summary += f"; mlflow run {run_id}" if run_id else ""
    return Outcome(result, summary, written, run_id, registered)


def log_word_calibration(cfg: CalibrateConfig, result: WordCalibration, record: dict | None, seconds: float,
                         source: RegisteredModel | None) -> None:
    """A token model's calibration in the active MLflow run: its target, the chosen point, the
    tested curve (one step per candidate) and the record."""
    t = result.target
    mlflow.log_params({"model": source.uri if source else cfg.model, "data": cfg.data, "mode": t.mode,
                       "target": t.value, "confidence": t.confidence, "rows": result.sentences, "unit": "sentence",
                       "path": result.path, "family_rows": result.family_sentences, "dry_run": cfg.dry_run})
    mlflow.set_tag("offramp.calibration", "certified" if result.certified else "not_certified")
    metrics = {k: v for k, v in result.point.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    metrics.update(certified_candidates=sum(q["certified"] for q in result.curve) - 1, calibration_seconds=seconds)
    if result.risk_bound is not None:
        metrics["risk_bound"] = result.risk_bound
    mlflow.log_metrics({f"chosen_{k}": float(v) for k, v in metrics.items()})
    for i, q in enumerate(result.curve[1:], 1):
        mlflow.log_metrics({f"curve_{k}": q[k] for k in ("mean_layers", "risk", "p_value", "token_layer_saving")}, step=i)
    mlflow.log_dict({"target": t.__dict__, "chosen": record, "curve": result.curve}, "calibration.json")


def describe_thresholds(result: calibration.Calibration) -> str:
    if result.path == "global":
        return f"threshold {result.threshold:.6g}"
    return f"per-layer thresholds [{', '.join(f'{t:.4g}' for t in result.thresholds[:-1])}] (alpha {result.point['alpha']:.4g})"


def describe_choice(choice: calibration.PolicyChoice, info_policy: str) -> str:
    """Which policy was certified and why: '' for a single candidate."""
    if not choice.family_speeds:
        return ""
    others = ", ".join(f"{n} {v:.2f}x" for n, v in choice.family_speeds.items() if n != choice.policy)
    own = "" if choice.policy == info_policy else f", replacing the stored {info_policy}"
    return (f"policy {choice.policy} (fastest certified in a trial on the {choice.calibration.family_rows} path rows: "
            f"{choice.family_speeds[choice.policy]:.2f}x; {others}{own}); ")


def _summary(cfg: CalibrateConfig, result: calibration.Calibration, record: dict | None, written: bool, run_id: str,
             registered: str = "", chosen: str = "") -> str:
    t, p = result.target, result.point
    if not result.certified:
        need = rows_needed(t.max_risk, t.delta, t.mode)
        split = result.family_rows > 0
        total = math.ceil(need / (1 - cfg.family_fraction)) if split else need
        return (
            f"no exiting threshold could be certified for '{t.describe()}' at confidence {t.confidence:.2f} "
            f"with {result.rows} certifying rows; the model is unchanged. Even zero errors need {need} certifying rows"
            + (f" ({total} in all, as {cfg.family_fraction:.0%} shape the per-layer path)" if split else "")
            + ": add calibration rows, loosen the target or lower --confidence."
        )
    line = (
        f"{chosen}{describe_thresholds(result)} ({where_written(cfg, written, registered)}): "
        f"on {result.rows} certifying rows, mean layers {p['mean_layers']:.2f} (ideal {p['ideal_speedup']:.2f}x), "
        f"agreement {p['agreement']:.4f} (lower bound {p['agreement_lower']:.4f})"
    )
    if "accuracy" in p:  # labels given; the drop's bound exists for an accuracy target only
        bound = record.get("accuracy_drop_upper")
        line += (
            f", accuracy {p['accuracy']:.4f} vs {p['accuracy_full_depth']:.4f} at full depth "
            f"(drop {100 * p['accuracy_drop']:.2f} pt" + (f", bound {100 * bound:.2f} pt)" if bound is not None else ")")
        )
    line += (f"; guarantee: {t.describe()} with probability >= {t.confidence:.2f}, for runs at max_length "
             f"{cfg.max_length} in {cfg.dtype}")
    return line + (f"; mlflow run {run_id}" if run_id else "")


def where_written(cfg: CalibrateConfig, written: bool, registered: str) -> str:
    if not written:
        return "dry run: not written"
    return f"registered as {registered}" if registered else f"written to {cfg.model}"


def log_calibration(cfg: CalibrateConfig, result: calibration.Calibration, record: dict | None, seconds: float,
                    source: RegisteredModel | None = None, choice: calibration.PolicyChoice | None = None) -> str:
    t, p = result.target, result.point
    with start_run(cfg.mlflow, "offramp-calibrate") as run:
        mlflow.log_params(
            {
                "model": source.uri if source else cfg.model,
                "data": cfg.data,
                "mode": t.mode,
                "target": t.value,
                "confidence": t.confidence,
                "rows": result.rows,
                "points": cfg.points,
                "path": result.path,
                "family_rows": result.family_rows,
                "dry_run": cfg.dry_run,
                "policy": choice.policy if choice else "",
            }
        )
        if choice and choice.family_speeds:  # what each candidate policy reached on the path rows
            mlflow.log_metrics({f"family_speedup_{n}": v for n, v in choice.family_speeds.items()})
        mlflow.set_tag("offramp.calibration", "certified" if result.certified else "not_certified")
        metrics = {k: v for k, v in p.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        if record and record.get("risk_bound") is not None:
            metrics["risk_bound"] = record["risk_bound"]
        metrics["certified_candidates"] = sum(q["certified"] for q in result.curve) - 1
        metrics["calibration_seconds"] = seconds
        mlflow.log_metrics({f"chosen_{k}": float(v) for k, v in metrics.items()})
        now = int(time.time() * 1000)
        curve = [
            Metric(f"curve_{key}", q[key], now, i)
            for i, q in enumerate(result.curve[1:], 1)
            for key in ("mean_layers", "risk", "p_value")
        ]
        for i in range(0, len(curve), 1000):  # MLflow takes at most 1000 metrics per batch
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=curve[i : i + 1000])
        fig = tradeoff_figure(result)
        mlflow.log_figure(fig, "calibration_tradeoff.png")
        plt.close(fig)
        mlflow.log_dict({"target": t.__dict__, "chosen": record, "curve": result.curve}, "calibration.json")
        return run.info.run_id
