"""FirstSeen: which of a peer's texts (a refused Origin) deserve a log line of their own.

A refusal explains itself best with the text refused, once: the first time a text is
seen it is reported; again, it is not. Texts come from outside, so at most `remember`
are kept; past that, unknown texts are only counted, and reported as a count at most
once per `interval`. A flood of distinct texts thus costs at most `remember` lines,
then one a minute, and a fixed amount of memory. Plain values, the caller's clock.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Note:
    """A log line due: `text` seen for the first time, or (`text` None) `unlisted`
    texts seen once the memory was full, since the last such note."""

    text: str | None
    unlisted: int = 0


class FirstSeen:
    def __init__(self, remember: int = 64, interval: float = 60.0) -> None:
        self.remember = remember
        self.interval = interval
        self._seen: set[str] = set()
        self._unlisted = 0
        self._next_count_at = float("-inf")

    def see(self, text: str, now: float) -> Note | None:
        """`text` was seen at `now`: the note to log, if one is due."""
        if text in self._seen:
            return None
        if len(self._seen) < self.remember:
            self._seen.add(text)
            return Note(text)
        self._unlisted += 1
        if now < self._next_count_at:
            return None
        note = Note(None, self._unlisted)
        self._unlisted = 0
        self._next_count_at = now + self.interval
        return note
