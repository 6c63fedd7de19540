"""What one replica has answered: counts a replica keeps and its JSON stats route returns.

The same numbers go to Ray's metrics (`actors/endpoint.py`, a Counter per exit layer) for a
dashboard over all replicas; these are one replica's, since its process started."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from offramp.exits.stage import StageBatchStats


@dataclass
class ReplicaStats:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch_texts: int = 0
    largest_batch_tokens: int = 0
    row_layers: int = 0  # work computed: row-layers (classifiers) or token-layers (taggers)
    busy_seconds: float = 0.0  # time spent in the stage runner
    exit_layers: Counter = field(default_factory=Counter)  # {layer: texts}; 0 = never ran (a bad text)
    statuses: Counter = field(default_factory=Counter)  # {status: texts}

    def add_answer(self, answer: dict) -> None:
        """One text answered: counted as it is given (a row that exits early is answered before
        its batch ends), so the counts of texts hold every answer a client has received."""
        self.texts += 1
        self.exit_layers[answer["exit_layer"]] += 1
        self.statuses[answer["status"]] += 1

    def add_batch(self, texts: int, tokens: int, stage: StageBatchStats) -> None:
        """A batch of `texts` texts done (its answers are counted one by one by add_answer)."""
        self.batches += 1
        self.largest_batch_texts = max(self.largest_batch_texts, texts)
        self.largest_batch_tokens = max(self.largest_batch_tokens, tokens)
        self.row_layers += stage.row_layers
        self.busy_seconds += stage.seconds

    def to_dict(self) -> dict:
        ran = sum(n for layer, n in self.exit_layers.items() if layer > 0)
        layers = sum(layer * n for layer, n in self.exit_layers.items())
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": self.batches,
            "mean_batch_texts": self.texts / self.batches if self.batches else 0.0,
            "largest_batch_texts": self.largest_batch_texts,
            "largest_batch_tokens": self.largest_batch_tokens,
            "row_layers": self.row_layers,
            "busy_seconds": self.busy_seconds,
            "mean_exit_layer": layers / ran if ran else None,
            "exit_layers": {str(k): v for k, v in sorted(self.exit_layers.items())},
            "statuses": dict(sorted(self.statuses.items())),
        }
