"""Example 1: notify the uploader when their file upload is done.

The seed does this in a FastAPI route; here it is a plain async function that any
Trio code running inside the service (a request handler, a background task) calls.
"""

from __future__ import annotations

import trio

from roomcast import Config, NotificationLevel, NotificationService, mint_token, open_service
from roomcast.client import connect


def process_upload(project_id: int, filename: str) -> None:
    """Stand-in for the real work: storing the file, scanning it, indexing it."""


async def upload_file(project_id: int, filename: str, user_id: int) -> dict[str, str]:
    process_upload(project_id, filename)

    # Every open tab of the uploader gets a `success` notification.
    await NotificationService.notify_user(
        user_id=user_id,
        message=f"File '{filename}' uploaded successfully!",
        level=NotificationLevel.SUCCESS,
        data={"project_id": project_id, "filename": filename},
    )

    return {"status": "success"}


async def main() -> None:
    config = Config(jwt_secret="example-secret-change-me-0123456789", port=0, http_port=-1)
    async with open_service(config) as service:
        # A client of user 42 (a browser tab would use roomcast.js; Python code, this).
        async with connect(service.url, token=mint_token(config, 42)) as tab:
            print("upload_file returned:", await upload_file(456, "report.pdf", user_id=42))
            print("tab got:", await tab.receive())  # the notification


if __name__ == "__main__":
    trio.run(main)
