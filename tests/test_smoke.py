from roomcast import NotificationService

from .conftest import connect


async def test_welcome_then_notification(service):
    async with connect(service, 7) as client:
        assert client.welcome["data"] == {"user_id": 7, "rooms": ["user_7"]}
        assert await NotificationService.notify_user(user_id=7, message="hi") is True
        frame = await client.recv()
        assert frame["message"] == "hi"
