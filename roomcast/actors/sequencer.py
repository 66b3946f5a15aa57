"""The node's sequencer: keeps the Redis round trip that numbers a cluster's frames off
each publish's path.

A publish in a cluster is numbered in Redis (`streams.py`). Awaiting that round trip
per publish made a cluster node about 8x slower than a lone one: its rooms went idle
between two frames and wrote each frame to each member alone (one system call per
member per frame). The sequencer is one FIFO for every room of the node: a publish
queues its frame and goes on; one task takes everything queued, numbers it in one
script call (`Streams.sequence_batch`), and hands the numbered frames to their rooms
in the order they were queued. A batch reaches a room at once, and the room writes
it to each member in one call. One batch is in flight at a time: the order is the
queue's, and the frames queued meanwhile make the next batch.

The queue is bounded: when it is full, a publish waits (the node's back-pressure).
A batch that Redis fails is numbered on this node instead, each frame by its room,
as a publish during an outage is (the backplane logs the outage once). With sharded
pub/sub a batch is one script per room: the rooms whose master failed are numbered
here, the others as Redis numbered them (`PartlyNumbered`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

from roomcast.actors.streams import BackplaneUnavailable, Numbered, PartlyNumbered
from roomcast.protocol import UserId

log = logging.getLogger(__name__)

R = TypeVar("R")

# Frames queued at most (a publish waits while the queue is full), and numbered in one
# script call at most.
QUEUE_SIZE = 4096
BATCH_SIZE = 512


@attrs.frozen
class Outgoing(Generic[R]):
    """A frame on its way: its room, its JSON, the user whose pending list keeps it if
    nobody hears it (a personal room), and what its room answers (or None)."""

    room: str
    body: bytes
    pending: UserId | None
    reply: R


Number = Callable[[Sequence[tuple[str, bytes, UserId | None]]], Awaitable[list[Numbered]]]


class Sequencer(Generic[R]):
    """`submit` queues; `run` (a task of the backplane) numbers and hands out."""

    def __init__(
        self,
        number: Number,
        hand: Callable[[Outgoing[R], Numbered | None], Awaitable[None]],
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._number = number  # raises BackplaneUnavailable
        self._hand = hand  # to the frame's room (None: the room numbers it here)
        self._batch_size = batch_size
        self._send, self._receive = trio.open_memory_channel[Outgoing[R]](queue_size)
        # The batch being numbered, then its frames left to hand out (last first): a
        # task restarted after a crash goes on with them.
        self._batch: list[Outgoing[R]] = []
        self._handing: list[tuple[Outgoing[R], Numbered | None]] = []
        self.batches = 0  # script calls made (for tests and the benchmark)

    async def submit(self, outgoing: Outgoing[R]) -> None:
        """Queue a frame (waits only while the queue is full)."""
        await self._send.send(outgoing)

    async def run(self) -> None:
        while True:
            if self._handing:
                await self._hand_out()
            if not self._batch:
                self._batch = [await self._receive.receive()]
                while len(self._batch) < self._batch_size:
                    try:
                        self._batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
            batch = self._batch
            numbered: Sequence[Numbered | None]
            try:
                numbered = await self._number([(o.room, o.body, o.pending) for o in batch])
                self.batches += 1
            except PartlyNumbered as partly:  # sharded: some rooms' masters failed
                numbered = partly.numbered  # those rooms number theirs here
            except BackplaneUnavailable:
                numbered = [None] * len(batch)  # numbered here, by each room
            self._handing = list(zip(batch, numbered, strict=True))
            self._handing.reverse()
            self._batch = []

    async def _hand_out(self) -> None:
        handing = self._handing
        while handing:
            outgoing, numbered = handing.pop()  # popped first: a crash loses this one only
            await self._hand(outgoing, numbered)
