"""Timing helpers of the input benchmarks: images/s and CPU per image, peak memory, a fit() clock."""

from __future__ import annotations

import resource
import time

import keras


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def time_batches(next_batch, batch_size: int, warmup: int, seconds: float) -> dict:
    """Calls `next_batch` `warmup` times, then for `seconds`; returns images/s and CPU per image."""
    for _ in range(warmup):
        next_batch()
    batches, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next_batch()
        batches += 1
    elapsed = time.perf_counter() - start
    images = batches * batch_size
    return {"img_s": images / elapsed, "cpu_ms_per_img": 1000 * (time.process_time() - cpu) / images}


class Clock(keras.callbacks.Callback):
    """Notes when each batch ends (wall and CPU) and stops `fit` `seconds` after the warm-up."""

    def __init__(self, warmup: int, seconds: float):
        super().__init__()
        self.warmup, self.seconds, self.ends = warmup, seconds, []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((time.perf_counter(), time.process_time()))
        timed = self.ends[self.warmup:]
        if timed and timed[-1][0] - timed[0][0] >= self.seconds:
            self.model.stop_training = True
