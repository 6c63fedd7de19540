"""Does a model's certificate cover how a tagging run executes?

A certificate (the calibration record in exit_profile.json, by jobs/calibrate.py or by
training) holds for the thresholds it certified, under the exit policy, mechanism, max_length
and dtype of the full-depth pass it came from (for a token model, also its exit mode, window
and sentence pooling). A run that changes any of these runs thresholds
no certificate speaks for: the run warns, and `--strict` refuses it at start.
"""

from __future__ import annotations


def certificate_gaps(
    record: dict | None,
    certified: bool,
    *,
    policy: str,
    mechanism: str,
    max_length: int,
    dtypes: set[str],
    thresholds: dict[int, float],
    stored: dict[int, float],
    token: dict | None = None,
) -> list[str]:
    """Why the run is not covered by the model's certificate, one sentence each (empty: covered).

    `thresholds` are the run's, `stored` the model's; `dtypes` the stages' compute dtypes;
    `token`: a token model's exit mode, window and sentence pooling in this run."""
    if not certified or not record:
        return ["the model's thresholds are uncertified: certify them with jobs/calibrate.py (or retrain with "
                "calibration_fraction > 0)"]
    gaps = []
    if any(abs(thresholds[l] - stored[l]) > 1e-12 for l in list(stored)[:-1]):
        gaps.append("the run's thresholds are not the certified ones (--threshold / exit.thresholds given)")
    for key, have in (("policy", policy), ("mechanism", mechanism), ("max_length", max_length), *(token or {}).items()):
        was = record.get(key)
        if was is not None and was != have:
            gaps.append(f"{key} is {have!r} but the certificate was made with {was!r}")
    was = record.get("dtype")
    other = sorted(d for d in dtypes if was is not None and d != was)
    if other:
        gaps.append(f"stages compute in {', '.join(other)} but the certificate was made in {was}")
    return gaps
