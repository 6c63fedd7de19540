"""What the in-run audit costs and whether its interval covers the truth, in one run.

    python benchmarks/bench_audit.py --model DIR --data ../shared/data/debian_sections/test.parquet

Tags the same rows with the same model and layout four times: audit fraction 0 (no audit),
0.01 (the default), 0.05, and 1.0 (every row also runs to full depth: the true agreement
of the whole run). Reports docs/s and the cost against no audit, the audit's agreement
estimate and interval against the true agreement, and checks that the answers do not
change. Each run is logged to MLflow (with its HTML report); OUT/audit_check.json holds
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
from pipelines.tag import run_tagging  # noqa: E402
from pipelines.tracking import log_tag_run  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--fractions", default="0,0.01,0.05,1")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    work = os.path.join(args.out, "audit_runs.tmp")
    runs = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        cfg = TagConfig(
            input=args.data,
            model=args.model,
            output=os.path.join(work, f"audit_{fraction:g}"),
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
            "fraction": fraction, "run_id": run_id, "wall_s": wall, "docs_per_s": m["rows"] / wall,
            "stage_busy_s": sum(v for k, v in m.items() if k.endswith("_busy_seconds")),
            "accuracy": m.get("accuracy"), "mean_layers": m["mean_layers"],
            "audit_rows": a.get("rows", 0), "agreement": a.get("agreement"), "lower": a.get("lower"),
            "upper": a.get("upper"), "target": a.get("target"), "status": a.get("status"),
            "extra_cost_fraction": a.get("extra_cost_fraction", 0.0),
        })
        print(json.dumps(runs[-1]), flush=True)
    outputs = {r["fraction"]: pq.read_table(os.path.join(work, f"audit_{r['fraction']:g}"),
                                            columns=["id", "label", "exit_layer"]).to_pandas().sort_values("id")
               for r in runs}
    base = outputs[runs[0]["fraction"]]
    same = {f: bool((o["label"].to_numpy() == base["label"].to_numpy()).all()
                    and (o["exit_layer"].to_numpy() == base["exit_layer"].to_numpy()).all()) for f, o in outputs.items()}
    truth = next((r["agreement"] for r in runs if r["fraction"] == 1.0), None)
    none = runs[0]
    for r in runs:
        r["answers_unchanged"] = same[r["fraction"]]
        r["slowdown_vs_no_audit"] = none["docs_per_s"] / r["docs_per_s"]
        r["busy_ratio_vs_no_audit"] = r["stage_busy_s"] / none["stage_busy_s"]
        r["interval_covers_truth"] = (None if truth is None or r["lower"] is None
                                      else bool(r["lower"] <= truth <= r["upper"]))
    with open(os.path.join(args.out, "audit_check.json"), "w") as f:
        json.dump({"model": args.model, "data": args.data, "true_agreement": truth, "runs": runs}, f, indent=1)
    print("\n| audit fraction | audited rows | agreement [95% interval] | covers the true agreement | "
          "extra row-layers | docs/s | stage busy time vs no audit | accuracy | answers unchanged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        est = "—" if r["agreement"] is None else f"{r['agreement']:.4f} [{r['lower']:.4f}, {r['upper']:.4f}]"
        print(f"| {r['fraction']:g} | {r['audit_rows']} | {est} | {r['interval_covers_truth']} | "
              f"{100 * r['extra_cost_fraction']:.2f}% | {r['docs_per_s']:.1f} | {r['busy_ratio_vs_no_audit']:.3f}× | "
              f"{r['accuracy']:.4f} | {r['answers_unchanged']} |")


if __name__ == "__main__":
    main()
