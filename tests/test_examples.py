"""The examples in examples/ do what they say, against a live service and real clients."""

from __future__ import annotations

from typing import Any

import trio

from examples import (
    maintenance_broadcast,
    notify_if_online,
    project_collaborators,
    upload_done,
)
from roomcast import NotificationService

from .conftest import connect, eventually, running


async def test_upload_file_notifies_every_tab_of_the_uploader_only():
    async with running() as service:
        async with (
            connect(service, 42) as tab1,
            connect(service, 42) as tab2,
            connect(service, 43) as other,
        ):
            result = await upload_done.upload_file(456, "report.pdf", user_id=42)

            assert result == {"status": "success"}
            expected = {
                "type": "info",
                "message": "File 'report.pdf' uploaded successfully!",
                "data": {
                    "project_id": 456,
                    "filename": "report.pdf",
                    "level": "success",
                    "notification": True,
                },
                "room": None,
            }
            assert await tab1.recv() == expected
            assert await tab2.recv() == expected
            await other.nothing_within()


async def test_upload_file_for_an_offline_user_still_succeeds():
    async with running():
        assert await upload_done.upload_file(1, "a.csv", user_id=99) == {"status": "success"}


async def _join(client: Any, room: str) -> None:
    reply = await client.request({"type": "join_room", "room": room})
    assert reply["message"] == f"Joined room: {room}"


async def test_notify_project_update_reaches_the_project_room(capsys):
    async with running() as service:
        async with (
            connect(service, 1) as alice_tab1,
            connect(service, 1) as alice_tab2,
            connect(service, 2) as bob,
            connect(service, 3) as carol,
        ):
            # Rooms are per connection: alice's second tab stays out of the project.
            for client in (alice_tab1, bob):
                await _join(client, "project_123")
            await _join(carol, "project_999")

            count = await project_collaborators.notify_project_update(123, "New result")

            assert count == 2  # distinct users: alice and bob
            assert capsys.readouterr().out == "Notified 2 users in project 123\n"
            expected = {
                "type": "room_message",
                "message": "New result",
                "data": {
                    "project_id": 123,
                    "action": "project_update",
                    "level": "info",
                    "notification": True,
                },
                "room": "project_123",
            }
            assert await alice_tab1.recv() == expected
            assert await bob.recv() == expected
            await alice_tab2.nothing_within()
            await carol.nothing_within()


async def test_notify_project_update_with_nobody_in_the_room(capsys):
    async with running() as service, connect(service, 1) as client:
        assert await project_collaborators.notify_project_update(5, "anyone?") == 0
        assert capsys.readouterr().out == "Notified 0 users in project 5\n"
        await client.nothing_within()


async def test_announce_maintenance_warns_every_connection():
    async with running() as service:
        async with (
            connect(service, 1) as one_tab1,
            connect(service, 1) as one_tab2,
            connect(service, 2) as two,
        ):
            await _join(two, "project_1")  # room membership does not matter

            assert await maintenance_broadcast.announce_maintenance(5) == 2

            expected = {
                "type": "broadcast",
                "message": "System maintenance in 5 minutes",
                "data": {"level": "warning", "notification": True},
                "room": None,
            }
            for client in (one_tab1, one_tab2, two):
                assert await client.recv() == expected


async def test_announce_maintenance_with_nobody_connected():
    async with running():
        assert await maintenance_broadcast.announce_maintenance(10) == 0


async def test_notify_if_online_sends_to_an_online_user():
    db: list[dict[str, Any]] = []
    async with running() as service, connect(service, 7) as tab, connect(service, 8) as other:
        assert await notify_if_online.notify_if_online(7, "Your report is ready", db) is True

        assert db == []
        assert await tab.recv() == {
            "type": "info",
            "message": "Your report is ready",
            "data": {"level": "info", "notification": True},
            "room": None,
        }
        await other.nothing_within()


async def test_notify_if_online_stores_for_an_offline_user():
    db: list[dict[str, Any]] = []
    async with running() as service, connect(service, 7) as tab:
        assert await notify_if_online.notify_if_online(8, "You were mentioned", db) is False

        assert db == [{"user_id": 8, "message": "You were mentioned"}]
        await tab.nothing_within()


async def test_notify_if_online_after_the_last_tab_closed():
    db: list[dict[str, Any]] = []
    async with running() as service:
        async with connect(service, 7):
            assert NotificationService.is_user_connected(7)
        # Whether or not the registry has already seen the disconnect, nothing is
        # sent to a closed tab, so the message is kept.
        assert await notify_if_online.notify_if_online(7, "Later", db) is False
        assert db == [{"user_id": 7, "message": "Later"}]

        await eventually(lambda: not NotificationService.is_user_connected(7), timeout=5)
        assert await notify_if_online.notify_if_online(7, "Even later", db) is False
        assert db[-1] == {"user_id": 7, "message": "Even later"}


async def test_every_example_main_runs(capsys):
    for module in (upload_done, project_collaborators, maintenance_broadcast, notify_if_online):
        with trio.fail_after(10):
            await module.main()
    out = capsys.readouterr().out
    assert "uploaded successfully" in out
    assert "Notified 2 users in project 123" in out
    assert "users warned: 2" in out
    assert "database: [{'user_id': 8, 'message': 'You were mentioned'}]" in out
