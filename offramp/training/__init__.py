"""Training an early-exit model for either task, and saving it for the pipeline.

    model, tokenizer, report = train_exits(cfg)   # cfg: TrainConfig
    save_trained(model, tokenizer, report, cfg.output)

loop.py is the kit every recipe uses; sequence.py trains a classifier with the mechanism
cfg.mechanism names (mechanisms/, one file each); token.py trains a sequence-labeling model;
config.py assembles TrainConfig from the settings they declare.
"""

from __future__ import annotations

from offramp.models.base import SEQUENCE, TOKEN
from offramp.training.config import TrainConfig
from offramp.training.loop import TrainReport, save_trained
from offramp.training.sequence import train_sequence_exits
from offramp.training.token import is_token_data, train_token_exits

DRIVERS = {SEQUENCE: train_sequence_exits, TOKEN: train_token_exits}


def training_task(cfg: TrainConfig) -> str:
    """cfg.task, or under `auto` token when the training file's label column holds lists of tags."""
    if cfg.task != "auto":
        return cfg.task
    cfg.require("train")
    return TOKEN if is_token_data(cfg.train, cfg.label_column) else SEQUENCE


def train_exits(cfg: TrainConfig):
    """Fine-tune an early-exit model for cfg's task; return (model, tokenizer, TrainReport)."""
    cfg.require("train", "eval", "output")
    return DRIVERS[training_task(cfg)](cfg)


__all__ = ["TrainConfig", "TrainReport", "save_trained", "train_exits", "training_task"]
