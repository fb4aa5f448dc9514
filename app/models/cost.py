"""What a batch costs on the model, learned from the batches it ran: the batch queue's
expected wait (and so its refusals) is priced with it.

A forward pass costs a fixed part (launching the layers, Python around them) plus a part per
token. A rate per token alone is wrong both ways: measured on a lone 9-token query (15 ms on
this 2-core CPU, 1.7 ms a token) it priced a 1,000-token batch of passages at 1.7 s (it takes
about 0.25 s), so every search that arrived while documents were being indexed was refused
as too late. So the cost is fit as `fixed + per_token * tokens` by least squares over recent
batches, older ones weighing less. While the batches seen so far are all about one size, the
split cannot be told, and the cost is taken as proportional to tokens (exact at that size).
"""

from __future__ import annotations

import math

# Each new batch weighs this much more than the one before it: about the last 50 batches
# count, so a change of load shows within a second or two, and one odd batch moves little.
_MEMORY = 0.98
# Sizes must spread by this fraction of their mean before a fixed part is fit.
_SPREAD = 0.25


class BatchCost:
    def __init__(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._fixed = 0.0
        self._per_token = 0.0

    @property
    def known(self) -> bool:
        return self._w > 0

    @property
    def fixed_s(self) -> float:
        return self._fixed

    @property
    def per_token_s(self) -> float:
        return self._per_token

    def observe(self, tokens: int, seconds: float) -> None:
        """A batch of `tokens` tokens took `seconds`."""
        if tokens <= 0 or seconds < 0 or not math.isfinite(seconds):
            return
        x, y = float(tokens), seconds
        self._w = _MEMORY * self._w + 1.0
        self._x = _MEMORY * self._x + x
        self._y = _MEMORY * self._y + y
        self._xx = _MEMORY * self._xx + x * x
        self._xy = _MEMORY * self._xy + x * y
        self._fit()

    def seconds(self, tokens: int, batches: int = 1) -> float:
        """The time `tokens` tokens take in `batches` batches (0 for no tokens)."""
        if tokens <= 0:
            return 0.0
        return max(1, batches) * self._fixed + tokens * self._per_token

    def _fit(self) -> None:
        mean_x, mean_y = self._x / self._w, self._y / self._w
        variance = self._xx / self._w - mean_x * mean_x
        if variance > (_SPREAD * mean_x) ** 2:
            slope = (self._xy / self._w - mean_x * mean_y) / variance
            fixed = mean_y - slope * mean_x
            if slope > 0 and fixed >= 0:  # else noise bent the line: proportional, below
                self._fixed, self._per_token = fixed, slope
                return
        self._fixed, self._per_token = 0.0, mean_y / mean_x
