"""A small actor that stage actors report per-batch timings to, and the reader each file's
row count; the driver reads it at the end."""

from __future__ import annotations

from collections import defaultdict


class MetricsCollector:
    """Sums StageBatchStats per stage. Counts here are work done (a retried batch counts twice);
    row counts that must match the output are computed from the output itself."""

    def __init__(self):
        self.totals = defaultdict(lambda: defaultdict(float))
        self.files: dict[str, int] = {}

    def file_read(self, path: str, rows: int) -> None:
        """The reader read `path` to its end: `rows` rows (a retried read reports the same)."""
        self.files[path] = rows

    def files_read(self) -> dict[str, int]:
        return dict(self.files)

    def ready(self, stages: list[int], began: float, ended: float) -> None:
        """An actor holding `stages` was constructed from `began` to `ended` (time.time() on its
        node): the first actor ready per stage, and when its constructor began."""
        for stage in stages:
            t = self.totals[stage]
            if ended < (t.get("ready") or float("inf")):
                t["ready"], t["init_began"] = ended, began

    def record(self, stats: dict) -> None:
        """One batch's `offramp.exits.stage.StageBatchStats`, as a dict."""
        t = self.totals[stats["stage"]]
        t["batches"] += stats.get("passes", 1)
        if stats.get("ended"):  # the span from the stage's first call's start to its last call's end
            start = stats["ended"] - stats["seconds"]
            t["first_start"] = min(t.get("first_start") or start, start)
            t["last_end"] = max(t.get("last_end") or 0.0, stats["ended"])
        for key in ("rows_in", "rows_exited", "tokens_in", "row_layers", "seconds", "audit_row_layers", "skipped_row_layers",
                    "rows_seen"):
            t[key] += stats[key]

    def summary(self) -> dict:
        return {stage: dict(v) for stage, v in self.totals.items()}
