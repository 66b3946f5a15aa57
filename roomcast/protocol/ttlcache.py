"""TtlCache: answers kept for a fixed time, at most so many of them, oldest out.

Pure: the time is passed in (`now`, seconds on one monotonic clock), nothing waits.
The join authorizer (roomcast/join_proxy.py) keeps its answers here, keyed by (user,
room), so that clients choosing the keys cannot grow it past `max_entries`.

Every entry lives `ttl` seconds from its last `put`, so the order of insertion is also
the order of expiry: the oldest entry is at the front, expired or not, and a `put`
drops the expired ones from the front before it evicts a live one for room.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values by key for `ttl` seconds after they were put, at most `max_entries` of
    them (past it, the oldest put goes). A `ttl` of 0 keeps nothing: what is put
    has expired already, and goes at once."""

    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, ttl: float, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        # key -> (the time it expires, the value); oldest put first
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The value put for `key` less than `ttl` seconds before `now`, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if now >= expires_at:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, now: float) -> None:
        """Keep `value` for `key` until `now + ttl`, replacing what `key` held."""
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (now + self.ttl, value)
        while entries:
            oldest = next(iter(entries.values()))
            if now < oldest[0]:
                break
            entries.popitem(last=False)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
