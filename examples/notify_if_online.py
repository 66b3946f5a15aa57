"""Example 4: notify a user who is online; keep the message for later otherwise.

`db` stands in for the application's database: a list the offline messages are
appended to, for the frontend to fetch on its next visit.
"""

from __future__ import annotations

from typing import Any

import trio

from roomcast import Config, NotificationLevel, NotificationService, mint_token, open_service
from roomcast.client import connect


def save_notification_to_db(db: list[dict[str, Any]], user_id: int, message: str) -> None:
    db.append({"user_id": user_id, "message": message})


async def notify_if_online(user_id: int, message: str, db: list[dict[str, Any]]) -> bool:
    """True if the user was connected and got the message; False if it was saved."""
    if NotificationService.is_user_connected(user_id):
        # `notify_user` says whether a connection got the frame, which also covers a
        # user who closed the last tab between the check and the send.
        delivered = await NotificationService.notify_user(
            user_id=user_id,
            message=message,
            level=NotificationLevel.INFO,
        )
        if delivered:
            return True
    save_notification_to_db(db, user_id, message)
    return False


async def main() -> None:
    config = Config(jwt_secret="example-secret-change-me-0123456789", port=0, http_port=-1)
    db: list[dict[str, Any]] = []
    async with open_service(config) as service:
        async with connect(service.url, token=mint_token(config, 7)) as tab:
            print("user 7 online, sent:", await notify_if_online(7, "Your report is ready", db))
            print("user 7 got:", await tab.receive())
        print("user 8 offline, sent:", await notify_if_online(8, "You were mentioned", db))
        print("database:", db)


if __name__ == "__main__":
    trio.run(main)
