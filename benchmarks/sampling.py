"""A benchmark's background sampler: `sample()` every `interval` seconds on a thread while a
`with` block runs (the peak RSS of `bench_tagging`, the per-process CPU of `pipeline_cpu`, the
memory of `bench_scale`). Imports nothing heavy: `bench_scale` measures its driver's memory."""

from __future__ import annotations

import threading


class Sampling:
    interval = 0.5  # seconds between samples; a subclass or instance sets its own

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
