"""Example 2: notify everyone working on a project.

Frontends that show project 123 join the room `project_123`; backend code sends one
notification to the room, and every connection in it gets a copy.

Rooms are closed unless a rule opens them (docs/security.md, "Rooms: who may join").
Here the backend opens `project_123` two ways: alice's connection token carries a
`rooms` claim (`"project_*"`: every project), and bob gets a room token for this one
room, which he sends in his `join_room` frame.
"""

from __future__ import annotations

import trio

from roomcast import Config, NotificationLevel, NotificationService, mint_token, open_service
from roomcast.client import connect


async def notify_project_update(project_id: int, update_message: str) -> int:
    """Notify all users working on a project; returns how many distinct users got it."""
    room_name = f"project_{project_id}"

    count = await NotificationService.notify_room(
        room_name=room_name,
        message=update_message,
        level=NotificationLevel.INFO,
        data={"project_id": project_id, "action": "project_update"},
    )

    print(f"Notified {count} users in project {project_id}")
    return count


async def main() -> None:
    config = Config(jwt_secret="example-secret-change-me-0123456789", port=0, http_port=-1)
    async with open_service(config) as service:
        # alice may join every project room: her token says so
        alice = mint_token(config, 1, extra={"rooms": "project_*"})
        bob = mint_token(config, 2)
        # bob may join project 123 only: the backend gave him a room token for it
        bobs_room_token = mint_token(config, 2, ttl=600, extra={"room": "project_123"})
        async with (
            connect(service.url, token=alice) as a,
            connect(service.url, token=bob) as b,
        ):
            print("alice got:", await a.join("project_123"))  # "Joined room: project_123"
            print("bob got:", await b.join("project_123", token=bobs_room_token))
            await notify_project_update(123, "New screening result available")
            print("alice got:", await a.receive())
            print("bob got:", await b.receive())


if __name__ == "__main__":
    trio.run(main)
