"""The exit profile stored beside a model's weights: dev survival per layer, the trade-off
curve, and the calibration record once jobs/calibrate.py has run."""

from __future__ import annotations

import json
import os

PROFILE_FILE = "exit_profile.json"


def save_profile(directory: str, profile: dict) -> None:
    """Write the exit profile (survival, trade-off curve, calibration record) beside the weights."""
    with open(os.path.join(directory, PROFILE_FILE), "w") as f:
        json.dump(profile, f, indent=1)


def load_profile(directory: str) -> dict:
    """The dev-set exit profile saved at training (survival per layer, trade-off curve); {} if absent."""
    path = os.path.join(directory, PROFILE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
