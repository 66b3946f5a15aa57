"""What a client may do, over time: its rate and its strikes. Sans-IO: the time is
passed in, and the answer is a decision the connection carries out.

- Each frame takes a token from the client's bucket (`rate` a second on average,
  `burst` at once); with none left it is refused (`rate_limited`).
- Every refused frame (rate, or any protocol error) is a strike; an accepted frame
  clears them. `max_strikes` in a row is abuse, not a mistake: the connection closes
  (4008).
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    GO_ON = "go_on"
    CLOSE = "close"  # too many refused frames in a row: close with 4008


class Policing:
    __slots__ = ("_burst", "_last", "_max_strikes", "_rate", "_tokens", "strikes")

    def __init__(self, rate: float, burst: int, max_strikes: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now
        self._max_strikes = max_strikes
        self.strikes = 0  # refused frames in a row

    def admit(self, now: float) -> bool:
        """May the client's next frame be handled now? Takes a token if so."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def accepted(self) -> None:
        self.strikes = 0

    def refused(self) -> Verdict:
        self.strikes += 1
        return Verdict.CLOSE if self.strikes >= self._max_strikes else Verdict.GO_ON
