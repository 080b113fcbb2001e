"""Loss spikes: Lightning's `SpikeDetection` rule, as a verdict every rank can reach alike and a
state a checkpoint carries (`training.stability` skips the steps it flags)."""

from __future__ import annotations

import math
from collections import deque


class SpikeDetector:
    """The verdict of Lightning's `SpikeDetection` (lightning/fabric/utilities/spike.py, mode "min")
    on a value every rank agrees on. Once `warmup` values were accepted, a value is a spike when it
    is not below the last accepted one, and it exceeds the mean of the last `window` accepted values
    by at least `atol` and by at least `rtol` x that mean (a tolerance of None always holds). A
    non-finite value is always a spike (Lightning's `finite_only=True`: a non-finite step cannot be
    applied). Only values that are not spikes are accepted. Unlike Lightning's, warmup counts
    accepted values rather than the batches of the current epoch, and the state is plain numbers, so
    a resumed run judges as the uninterrupted one would."""

    def __init__(
        self, window: int = 10, warmup: int = 1, atol: float | None = None, rtol: float | None = 2.0
    ) -> None:
        if window < 1 or warmup < 0:
            raise ValueError(f"spike window={window} must be >= 1 and warmup={warmup} >= 0")
        self.window, self.warmup, self.atol, self.rtol = window, warmup, atol, rtol
        self.values: deque[float] = deque(maxlen=window)
        self.last = 0.0
        self.accepted = 0

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    def is_spike(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        if self.accepted < max(self.warmup, 1) or value - self.last <= 0:
            return False
        mean = self.mean
        return (self.atol is None or abs(value - mean) >= abs(self.atol)) and (
            self.rtol is None or abs(value - mean) >= abs(self.rtol * mean)
        )

    def accept(self, value: float) -> None:
        self.values.append(value)
        self.last = value
        self.accepted += 1

    def state_dict(self) -> dict:
        return {"values": list(self.values), "last": self.last, "accepted": self.accepted}

    def load_state_dict(self, state: dict) -> None:
        self.values = deque(state["values"], maxlen=self.window)
        self.last, self.accepted = state["last"], state["accepted"]
