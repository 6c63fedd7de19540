"""What the in-run audit costs and whether its interval covers the truth, in one run.

    python benchmarks/bench_audit.py --model DIR --data ../shared/data/debian_sections/test.parquet

After an unreported warm-up run on a few hundred rows (the first run of a process pays for
loading libraries), tags the same rows with the same model and layout at audit fraction
0 (no audit), 0.01 (the default), 0.05, 1.0 (every row also runs to full depth: the true
agreement of the whole run), and 0 again (to bracket the machine's drift). Reports docs/s
and stage busy time against the mean of the two no-audit runs, the audit's agreement
estimate and interval against the true agreement, and checks that the answers do not
change. Then, from the full-audit run's output, a seed study: the audit sample that
seeds 0..S-1 would draw at each fraction, how often its interval covers the true
agreement, and how often each alarm rule would fire (`--study-only` redoes just this
from the last run's files). Each run is logged to MLflow (with its HTML report); OUT/audit_check.json holds
the numbers and the run ids, for `jobs/plan_capacity.py --run-id`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow.parquet as pq  # noqa: E402

from offramp.config import AuditConfig, MlflowConfig, TagConfig  # noqa: E402
from pipelines.run import run_tagging  # noqa: E402
from pipelines.tracking import log_tag_run  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--fractions", default="0,0.01,0.05,1,0")
    p.add_argument("--warmup-rows", type=int, default=300)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--study-only", action="store_true")
    args = p.parse_args()
    if args.study_only:
        with open(os.path.join(args.out, "audit_check.json")) as f:
            saved = json.load(f)
        full = next(r for r in saved["runs"] if r["fraction"] == 1.0)
        saved["seed_study"] = seed_study(os.path.join(args.out, "audit_runs.tmp", f"run{full['run']}"),
                                         full["target"], args.seeds)
        with open(os.path.join(args.out, "audit_check.json"), "w") as f:
            json.dump(saved, f, indent=1)
        return
    work = os.path.join(args.out, "audit_runs.tmp")
    os.makedirs(work, exist_ok=True)
    warm = os.path.join(work, "warmup.parquet")
    pq.write_table(pq.read_table(args.data).slice(0, args.warmup_rows), warm)
    run_tagging(TagConfig(input=warm, model=args.model, output=os.path.join(work, "warmup_out"), overwrite=True,
                          max_length=args.max_length, mlflow=MlflowConfig(enabled=False)))
    runs = []
    for i, fraction in enumerate(float(f) for f in args.fractions.split(",")):
        cfg = TagConfig(
            input=args.data,
            model=args.model,
            output=os.path.join(work, f"run{i}"),
            overwrite=True,
            label_column="label",
            max_length=args.max_length,
            batch_size=args.batch_size,
            audit=AuditConfig(fraction=fraction, seed=0),
            mlflow=MlflowConfig(tracking_uri=args.tracking_uri, experiment="offramp-bench-audit",
                                run_name=f"audit {fraction:g}"),
        )
        t0 = time.perf_counter()
        result = run_tagging(cfg)
        wall = time.perf_counter() - t0
        run_id = log_tag_run(cfg, result, num_layers=result.layout[-1].spec.end)
        m, a = result.metrics, result.audit or {}
        runs.append({
            "run": i, "fraction": fraction, "run_id": run_id, "wall_s": wall, "docs_per_s": m["rows"] / wall,
            "stage_busy_s": sum(v for k, v in m.items() if k.endswith("_busy_seconds")),
            "accuracy": m.get("accuracy"), "mean_layers": m["mean_layers"],
            "audit_rows": a.get("rows", 0), "agreement": a.get("agreement"), "lower": a.get("lower"),
            "upper": a.get("upper"), "target": a.get("target"), "status": a.get("status"),
            "extra_cost_fraction": a.get("extra_cost_fraction", 0.0),
        })
        print(json.dumps(runs[-1]), flush=True)
    outputs = [pq.read_table(os.path.join(work, f"run{r['run']}"), columns=["id", "label", "exit_layer"])
               .to_pandas().sort_values("id") for r in runs]
    base = outputs[0]
    truth = next((r["agreement"] for r in runs if r["fraction"] == 1.0), None)
    none = [r for r in runs if r["fraction"] == 0] or runs[:1]
    none_docs = sum(r["docs_per_s"] for r in none) / len(none)
    none_busy = sum(r["stage_busy_s"] for r in none) / len(none)
    for r, o in zip(runs, outputs):
        r["answers_unchanged"] = bool((o["label"].to_numpy() == base["label"].to_numpy()).all()
                                      and (o["exit_layer"].to_numpy() == base["exit_layer"].to_numpy()).all())
        r["throughput_vs_no_audit"] = r["docs_per_s"] / none_docs
        r["busy_ratio_vs_no_audit"] = r["stage_busy_s"] / none_busy
        r["interval_covers_truth"] = (None if truth is None or r["lower"] is None
                                      else bool(r["lower"] <= truth <= r["upper"]))
    full = next((r for r in runs if r["fraction"] == 1.0), None)
    study = seed_study(os.path.join(work, f"run{full['run']}"), full["target"], args.seeds) if full else None
    with open(os.path.join(args.out, "audit_check.json"), "w") as f:
        json.dump({"model": args.model, "data": args.data, "true_agreement": truth, "runs": runs,
                   "seed_study": study}, f, indent=1)
    print("\n| audit fraction | audited rows | agreement [95% interval] | covers the true agreement | "
          "extra row-layers | docs/s | docs/s vs no audit | stage busy time vs no audit | accuracy | answers unchanged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        est = "—" if r["agreement"] is None else f"{r['agreement']:.4f} [{r['lower']:.4f}, {r['upper']:.4f}]"
        print(f"| {r['fraction']:g} | {r['audit_rows']} | {est} | {r['interval_covers_truth']} | "
              f"{100 * r['extra_cost_fraction']:.2f}% | {r['docs_per_s']:.1f} | {r['throughput_vs_no_audit']:.3f} | "
              f"{r['busy_ratio_vs_no_audit']:.3f}× | "
              f"{r['accuracy']:.4f} | {r['answers_unchanged']} |")


def seed_study(full_output: str, target: float | None, seeds: int, fractions=(0.01, 0.05), confidence=0.95):
    """What the audit would have said under other seeds: every row of `full_output` was audited."""
    from offramp.quality.audit import summarize_audit
    from offramp.schema import audit_mask

    t = pq.read_table(full_output, columns=["id", "label", "exit_layer", "full_depth_label", "status"]).to_pandas()
    t = t[t["status"].isin(["ok", "truncated"])]
    truth = float((t["label"] == t["full_depth_label"]).mean())
    ids, layers = t["id"].to_numpy(), t["exit_layer"].to_numpy()
    label, full = t["label"].to_numpy(dtype=object), t["full_depth_label"].to_numpy(dtype=object)
    out = {"true_agreement": truth, "target": target, "seeds": seeds, "confidence": confidence, "fractions": {}}
    for fraction in fractions:
        covered = est_alarm = bound_alarm = 0
        sizes = []
        for seed in range(seeds):
            a = summarize_audit(layers, label, full, audit_mask(ids, fraction, seed), int(layers.max()),
                                confidence, target, "estimate")
            sizes.append(a["rows"])
            covered += a["lower"] <= truth <= a["upper"]
            est_alarm += a["status"] == "below_target"
            bound_alarm += a["significant"]
        out["fractions"][str(fraction)] = {
            "mean_rows": sum(sizes) / seeds, "coverage": covered / seeds,
            "estimate_alarm_rate": est_alarm / seeds, "bound_alarm_rate": bound_alarm / seeds,
        }
        print(f"fraction {fraction}: ~{sum(sizes) / seeds:.0f} rows; the {confidence:.0%} interval covered the true "
              f"agreement {truth:.4f} in {covered / seeds:.1%} of {seeds} seeds; against target {target}: estimate "
              f"alarm {est_alarm / seeds:.1%}, bound alarm {bound_alarm / seeds:.1%}", flush=True)
    return out


if __name__ == "__main__":
    main()
