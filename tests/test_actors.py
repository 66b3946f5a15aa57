"""The two runners of an actor (roomcast.actors.base), each alone, without sockets."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from roomcast.actors.base import MessageActor


class Recorder(MessageActor):
    """Handles a message by recording it, once `gate` is set."""

    def __init__(self, mailbox_size: int | None) -> None:
        super().__init__("recorder", mailbox_size)
        self.handled: list[Any] = []
        self.gate = trio.Event()

    async def handle(self, message: Any) -> None:
        await self.gate.wait()
        self.handled.append(message)


async def test_a_full_mailbox_holds_senders_but_never_a_tell():
    actor = Recorder(mailbox_size=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await actor.send("first")  # taken by the loop, which waits on the gate
        await trio.testing.wait_all_tasks_blocked()
        await actor.send("second")  # queued: the mailbox is now full
        sent = []

        async def third() -> None:
            await actor.send("third")
            sent.append("third")

        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # back-pressure: the publisher waits
        await actor.tell("join")  # the registry's join: queued at once, never waits
        actor.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["third"]
        assert actor.handled == ["first", "second", "join", "third"]
        nursery.cancel_scope.cancel()


async def test_a_stopped_mailbox_releases_its_waiting_senders():
    actor = Recorder(mailbox_size=1)
    await actor.send("fills it")  # nobody runs the loop
    async with trio.open_nursery() as nursery:
        errors: list[type[BaseException]] = []

        async def blocked() -> None:
            try:
                await actor.send("waits")
            except trio.BrokenResourceError as error:
                errors.append(type(error))

        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        actor.stop()
    assert errors == [trio.BrokenResourceError]
    with pytest.raises(trio.BrokenResourceError):
        await actor.tell("late")


async def test_an_inline_actor_handles_a_tell_in_the_senders_task():
    actor = Recorder(mailbox_size=None)
    actor.gate.set()
    await actor.tell("now")
    assert actor.handled == ["now"]
