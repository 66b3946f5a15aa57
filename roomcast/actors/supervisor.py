"""Supervision, in the manner of OTP's one_for_one: a crashed actor is restarted with
its state intact; more than `intensity` restarts within `period` seconds escalate."""

from __future__ import annotations

import logging
from collections import deque

import trio

from roomcast.actors.base import MailboxActor

log = logging.getLogger(__name__)


class Escalation(Exception):
    """An actor crashed more often than the restart policy allows."""


class Supervisor:
    def __init__(self, nursery: trio.Nursery, intensity: int = 10, period: float = 5.0) -> None:
        self._nursery = nursery
        self.intensity = intensity
        self.period = period
        self.restarts = 0
        self._recent: deque[float] = deque()

    def start(self, actor: MailboxActor) -> None:
        """Run `actor` in the supervised nursery; synchronous, so a caller can start
        an actor and send to it without a checkpoint in between."""
        self._nursery.start_soon(self._supervise, actor, name=actor.name)

    async def _supervise(self, actor: MailboxActor) -> None:
        while True:
            try:
                await actor.run()
                return
            except Exception:
                log.exception("actor crashed: %s; restarting it with its state", actor.name)
                self._count_restart(actor)

    def _count_restart(self, actor: MailboxActor) -> None:
        now = trio.current_time()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self.period:
            self._recent.popleft()
        self.restarts += 1
        if len(self._recent) > self.intensity:
            log.critical(
                "actor %s: %d restarts within %.1f s; escalating",
                actor.name, len(self._recent), self.period,
            )
            raise Escalation(f"{actor.name} restarted too often")
