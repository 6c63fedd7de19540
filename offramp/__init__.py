"""offramp: batched early-exit BERT inference on Ray Data."""
