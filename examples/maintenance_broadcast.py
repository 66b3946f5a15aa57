"""Example 3 of the seed's method list: a broadcast to every connected user.

The seed's own Example 3 runs `asyncio.run(...)` inside a Celery task; in roomcast
the facade is called from Trio code running inside the service, as here.
"""

from __future__ import annotations

import trio

from roomcast import Config, NotificationLevel, NotificationService, mint_token, open_service
from roomcast.client import connect


async def announce_maintenance(minutes: int = 5) -> int:
    """Warn every connected user; returns how many distinct users were reached."""
    return await NotificationService.broadcast(
        message=f"System maintenance in {minutes} minutes",
        level=NotificationLevel.WARNING,
    )


async def main() -> None:
    config = Config(jwt_secret="example-secret-change-me-0123456789", port=0, http_port=-1)
    async with open_service(config) as service:
        async with (
            connect(service.url, token=mint_token(config, 1)) as a,
            connect(service.url, token=mint_token(config, 2)) as b,
        ):
            print("users warned:", await announce_maintenance(5))
            print("user 1 got:", await a.receive())
            print("user 2 got:", await b.receive())


if __name__ == "__main__":
    trio.run(main)
