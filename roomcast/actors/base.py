"""What every mailbox actor shares: a bounded mailbox, a loop, and replies."""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

import attrs
import trio

from roomcast.metrics import UNCOUNTED, Metrics

T = TypeVar("T")


class ActorCrashed(Exception):
    """The actor handling a request crashed before it could answer."""


class Reply(Generic[T]):
    """A one-shot answer slot: cheaper than a channel, and failed if the actor crashes."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@attrs.define
class Crash:
    """Fault injection: the actor raises `error` when it handles this message."""

    error: BaseException
    reply: Reply[Any] | None = None


class MailboxActor:
    """An actor reached only through its bounded mailbox; `handle` runs one message."""

    name: str
    metrics: Metrics = UNCOUNTED  # the service's, given by the supervisor that starts it

    def __init__(self, name: str, mailbox_size: int) -> None:
        self.name = name
        self._mailbox, self._inbox = trio.open_memory_channel[Any](mailbox_size)

    async def send(self, message: Any) -> None:
        await self._mailbox.send(message)

    async def call(self, message_with_reply: Any) -> Any:
        """Send a message carrying a `reply` slot and wait for the answer."""
        await self._mailbox.send(message_with_reply)
        return await message_with_reply.reply.wait()

    def stop(self) -> None:
        """The actor will not run again: senders get BrokenResourceError, not a hang."""
        self._inbox.close()

    def close_mailbox(self) -> None:
        """No new messages; the loop ends once it has handled those already queued."""
        self._mailbox.close()

    tick_interval: float | None = None  # when set, `tick` runs that often

    async def run(self) -> None:
        """The actor's loop; a supervisor calls it again after a crash, state intact."""
        next_tick = trio.current_time() + (self.tick_interval or math.inf)
        while True:
            message: Any = None
            try:
                await self.idle()
                if self.tick_interval is None:
                    message = await self._inbox.receive()
                else:
                    with trio.move_on_at(next_tick):
                        message = await self._inbox.receive()
            except trio.EndOfChannel:
                return
            if self.tick_interval is not None and trio.current_time() >= next_tick:
                next_tick = trio.current_time() + self.tick_interval
                await self.tick()
            if message is None:
                continue
            try:
                if isinstance(message, Crash):
                    raise message.error
                await self.handle(message)
            except BaseException:
                self.on_crash(message)
                raise

    async def handle(self, message: Any) -> None:
        raise NotImplementedError

    async def idle(self) -> None:
        """Runs before the loop takes its next message (a room flushes here)."""

    def mailbox_empty(self) -> bool:
        return not self._inbox.statistics().current_buffer_used

    async def tick(self) -> None:
        """Periodic work of an actor that sets `tick_interval`."""

    def on_crash(self, message: Any) -> None:
        """The message being handled crashed the actor: by default its caller is told."""
        reply = getattr(message, "reply", None)
        if reply is not None:
            reply.fail(ActorCrashed(f"{self.name} crashed"))
