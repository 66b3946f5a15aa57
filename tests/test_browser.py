"""The demo page and the JavaScript client in real headless Chromium (Debian's package,
driven by Playwright for Python), against a real service started here in demo mode.

Playwright's sync API runs in one thread of its own (`Browser`); the tests are Trio
tests, so backend code (the notification facade, restarts) runs in the test itself
while the browser waits in its thread. `./dev.sh test` installs what these tests need;
without Chromium they skip, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from roomcast import Service, open_service
from tests.conftest import connect, eventually, make_config

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# The picture of the demo in docs/js-client.md. test_backend_notifications_appear_as_toasts_by_level
# rewrites it only when asked to, and only if the page looks different (same_picture):
#     ROOMCAST_UPDATE_SCREENSHOT=1 ./dev.sh test tests/test_browser.py
SCREENSHOT = ROOT / "docs" / "demo.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The pages' clocks stand still at this moment, so the screenshot is the same every run.
FROZEN = datetime(2025, 6, 2, 9, 41, tzinfo=UTC)
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.timeout(240)


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run the browser tests (./dev.sh test installs it)")
    pytest.skip(f"{why} (./dev.sh test installs it)")


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("ROOMCAST_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class Browser:
    """Chromium with a fresh profile, owned by one thread: Playwright's sync API must
    be called from the thread that started it."""

    def __init__(self, executable: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="playwright")
        self._profile = tempfile.mkdtemp(prefix="roomcast-chromium-")
        self._executable = executable
        self.sync(self._start)

    def _start(self) -> None:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=TIMEOUT_MS)
        self._playwright = sync_playwright().start()
        self.context = self._playwright.chromium.launch_persistent_context(
            self._profile,
            executable_path=self._executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1180, "height": 720},
            locale="en-US",
            timezone_id="UTC",
        )
        self.context.set_default_timeout(TIMEOUT_MS)

    def sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the browser's thread while Trio keeps serving."""
        return await trio.to_thread.run_sync(self.sync, fn, *args, abandon_on_cancel=True)

    def close(self) -> None:
        def stop() -> None:
            self.context.close()  # and its pages
            self._playwright.stop()

        try:
            self.sync(stop)
        finally:
            self._pool.shutdown()
            shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    executable = _chromium()
    if executable is None:
        _unavailable("Chromium is not installed (Debian: apt-get install chromium)")
    b = Browser(executable)
    try:
        yield b
    finally:
        b.close()


@asynccontextmanager
async def demo_service(**overrides: Any):
    """The service in demo mode, its HTTP port picked free unless given."""
    values: dict[str, Any] = {"http_port": 0, "demo": True, **overrides}
    async with open_service(make_config(**values)) as service:
        assert service.http_port, "the service has no HTTP port"
        yield service


def base_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.http_port}"


# -- steps, run in the browser's thread -------------------------------------------


def sign_in(browser: Browser, url: str, user: str, ttl: int | None = None,
            init_script: str | None = None) -> Any:
    """A new page on the demo, signed in as `user` through /demo/token, connected.
    `init_script` runs in the page before its own scripts."""
    from playwright.sync_api import expect

    page = browser.context.new_page()
    if init_script is not None:
        page.add_init_script(init_script)
    page.clock.set_fixed_time(FROZEN)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.goto(url)
    page.fill("#user-id", user)
    if ttl is not None:
        page.fill("#ttl", str(ttl))
    page.click("#mint")
    expect(page.locator("#state")).to_have_attribute("data-state", "open")
    expect(page.locator("#who")).to_have_text(user)
    return page


def join(page: Any, room: str) -> None:
    """Join through the form and wait for the service's confirmation."""
    from playwright.sync_api import expect

    page.fill("#room-name", room)
    page.click("#join")
    expect(page.locator(f'#rooms li[data-room="{room}"] span:not(.pending)')).to_have_count(1)


def say(page: Any, room: str, text: str) -> None:
    page.select_option("#send-room", room)
    page.fill("#message", text)
    page.press("#message", "Enter")


def sees(page: Any, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#log .entry-message", has_text=text)).to_have_count(1)


def toast(page: Any, level: str, text: str) -> None:
    from playwright.sync_api import expect

    box = page.locator(f".toast.toast-{level}", has_text=text)
    expect(box).to_be_visible()
    expect(box.locator("strong")).to_have_text(level)


def state(page: Any, expected: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#state")).to_have_attribute("data-state", expected)


def demo_value(page: Any, expression: str) -> Any:
    return page.evaluate(f"() => {{ const demo = window.roomcastDemo; return {expression}; }}")


def close_pages(*pages: Any) -> None:
    """Close each page, after checking that it raised no JavaScript error."""
    for page in pages:
        assert not page.errors, page.errors
        page.close()


def same_picture(a: bytes, b: bytes) -> bool:
    """Whether two PNGs show the same page, give or take a few pixels of antialiasing,
    so that the committed screenshot changes only when the page does."""

    def pixels(png: bytes) -> bytes:
        chunks, i = [], 8
        while i < len(png):
            (size,) = struct.unpack(">I", png[i : i + 4])
            if png[i + 4 : i + 8] in (b"IHDR", b"IDAT"):
                chunks.append(png[i + 8 : i + 8 + size])
            i += 12 + size
        return chunks[0] + zlib.decompress(b"".join(chunks[1:]))

    try:
        x, y = pixels(a), pixels(b)
    except (struct.error, zlib.error, IndexError):
        return False
    return len(x) == len(y) and sum(p != q for p, q in zip(x, y, strict=True)) < len(x) // 2000


# -- the tests ------------------------------------------------------------------------


async def test_two_users_see_each_others_messages(browser: Browser) -> None:
    async with demo_service() as service:
        alice = await browser(sign_in, browser, base_url(service), "alice")
        bob = await browser(sign_in, browser, base_url(service), "bob")
        await browser(join, alice, "project_42")
        await browser(join, bob, "project_42")
        assert service.notifications.get_room_members("project_42") == {"alice", "bob"}

        await browser(say, alice, "project_42", "Hello Bob, the draft is up")
        await browser(sees, bob, "Hello Bob, the draft is up")
        await browser(sees, alice, "Hello Bob, the draft is up")  # her own copy
        await browser(say, bob, "project_42", "Thanks Alice, reading it now")
        await browser(sees, alice, "Thanks Alice, reading it now")
        log = await browser(lambda: alice.inner_text("#log"))
        assert "project_42 · user bob" in log and "project_42 · you" in log

        # Leaving a room stops its messages (and the page forgets to rejoin it).
        await browser(lambda: alice.click('#rooms button[aria-label="Leave project_42"]'))
        members = service.notifications.get_room_members
        await eventually(lambda: members("project_42") == {"bob"}, timeout=15)
        await browser(say, bob, "project_42", "Anyone still here?")
        await browser(sees, bob, "Anyone still here?")
        assert "Anyone still here?" not in await browser(lambda: alice.inner_text("#log"))
        await browser(close_pages, alice, bob)


async def test_backend_notifications_appear_as_toasts_by_level(browser: Browser) -> None:
    async with demo_service() as service:
        alice = await browser(sign_in, browser, base_url(service), "alice")
        bob = await browser(sign_in, browser, base_url(service), "bob")
        for page in (alice, bob):
            await browser(join, page, "project_42")
        await browser(say, bob, "project_42", "Uploading the Q3 report now")
        await browser(sees, alice, "Uploading the Q3 report now")
        await browser(say, alice, "project_42", "Great, I'll review it")
        await browser(sees, bob, "Great, I'll review it")

        # Backend Trio code, through the facade.
        delivered = await service.notifications.notify_user(
            "alice", "File 'q3-report.pdf' uploaded successfully!", level="success",
            data={"project_id": 42},
        )
        assert delivered is True
        reached = await service.notifications.notify_room(
            "project_42", "Build #311 is slower than usual", level="warning"
        )
        assert reached == 2
        await browser(toast, alice, "success", "uploaded successfully")
        await browser(toast, alice, "warning", "Build #311")
        await browser(toast, bob, "warning", "Build #311")
        assert await browser(lambda: bob.locator(".toast-success").count()) == 0

        def screenshot() -> bytes:
            alice.wait_for_function(  # the toasts' slide-in has ended
                "() => [...document.querySelectorAll('.toast')].every((toast) =>"
                " toast.getAnimations().every((a) => a.playState === 'finished'))"
            )
            return alice.screenshot(animations="disabled")

        png = await browser(screenshot)
        assert png.startswith(b"\x89PNG")
        if os.environ.get("ROOMCAST_UPDATE_SCREENSHOT") == "1" and (
            not SCREENSHOT.exists() or not same_picture(SCREENSHOT.read_bytes(), png)
        ):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(png)
        await browser(lambda: alice.locator(".toast-warning .close").click())
        assert await browser(lambda: alice.locator(".toast-warning").count()) == 0

        await service.notifications.broadcast("Maintenance at 18:00", level="error")
        await browser(toast, bob, "error", "Maintenance at 18:00")
        await service.notifications.notify_user("bob", "Your export is ready")
        await browser(toast, bob, "info", "Your export is ready")
        roles = await browser(lambda: bob.eval_on_selector_all(
            ".toast", "toasts => toasts.map((t) => t.getAttribute('role'))"
        ))
        assert "alert" in roles and "status" in roles
        await browser(close_pages, alice, bob)


# Keeps every WebSocket the page opens in `window.sockets`, to read what it negotiated.
RECORD_SOCKETS = """
window.sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) { super(...args); window.sockets.push(this); }
};
"""


async def test_chromium_negotiates_permessage_deflate_and_reads_compressed_frames(
    browser: Browser, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import roomcast.actors.room
    from roomcast.protocol.deflate import deflated_frame

    compressed: list[bytes] = []

    def counted(frame: bytes) -> bytes:
        deflated = deflated_frame(frame)
        compressed.extend([deflated] if deflated is not frame else [])
        return deflated

    monkeypatch.setattr(roomcast.actors.room, "deflated_frame", counted)
    async with demo_service() as service:
        alice = await browser(sign_in, browser, base_url(service), "alice", None,
                              RECORD_SOCKETS)
        extensions = await browser(lambda: alice.evaluate("() => window.sockets[0].extensions"))
        assert extensions.startswith("permessage-deflate"), extensions
        assert "server_no_context_takeover" in extensions
        await browser(join, alice, "project_42")
        text = "Build #312 finished: " + "every check passed, " * 10
        assert await service.notifications.notify_room("project_42", text, level="warning") == 1
        await browser(toast, alice, "warning", "Build #312 finished")  # it decoded
        assert len(compressed) == 1
        await browser(close_pages, alice)


async def test_page_reconnects_after_a_restart_and_is_back_in_its_rooms(
    browser: Browser,
) -> None:
    async with demo_service() as service:
        ws_port, http_port = service.port, service.http_port
        url = base_url(service)
        alice = await browser(sign_in, browser, url, "alice")
        await browser(join, alice, "project_42")
        await browser(join, alice, "team.ops")
        await browser(lambda: alice.evaluate("() => { window.notReloaded = true; }"))

    # The service is gone: the page notices (1001) and keeps trying.
    await browser(lambda: alice.wait_for_function(
        "() => ['reconnecting', 'connecting'].includes(window.roomcastDemo.client.state)"))

    async with demo_service(port=ws_port, http_port=http_port) as service:
        assert (service.port, service.http_port) == (ws_port, http_port)
        await browser(state, alice, "open")
        members = service.notifications.get_room_members
        await eventually(
            lambda: {"alice"} <= members("project_42") & members("team.ops"), timeout=15
        )
        assert await browser(lambda: alice.evaluate("() => window.notReloaded === true"))
        assert await browser(demo_value, alice, "demo.client.stats.opens") == 2
        # A new process has new histories: the page is told to reload, not left with a gap.
        await browser(lambda: alice.locator(
            "#log .entry-warning", has_text="could not be recovered (epoch_changed)"
        ).first.wait_for())

        async with connect(service, "bob") as bob:
            await bob.request({"type": "join_room", "room": "project_42"})
            reply = await bob.request(
                {"type": "room_message", "room": "project_42", "data": "Back after the restart"}
            )
            assert reply["message"] == "Back after the restart"
            await browser(sees, alice, "Back after the restart")
        await browser(close_pages, alice)


async def test_an_expiring_token_is_renewed_through_get_token(browser: Browser) -> None:
    # No leeway: the service closes with 4001 the moment a token's exp passes.
    async with demo_service(jwt_leeway=0) as service:
        alice = await browser(sign_in, browser, base_url(service), "alice", 4)
        await browser(join, alice, "project_42")
        await browser(lambda: alice.evaluate("() => { window.notReloaded = true; }"))
        assert await browser(lambda: alice.inner_text("#lifetime")) == "4 s"

        # Two renewals on the open connection (#renewals counts the service's answers to
        # refresh_token). A 4 s token is renewed at two thirds of its life, so the second
        # comes after the first token's exp: with no leeway, had the renewal not taken,
        # the service would have closed the connection by then.
        await browser(lambda: alice.wait_for_function(
            "() => Number(document.getElementById('renewals').textContent) >= 2"
        ))

        await browser(state, alice, "open")
        calls = await browser(demo_value, alice, "demo.tokenCalls.map((c) => c.reason)")
        assert calls[0] == "connect"
        assert calls.count("refresh") >= 2, calls
        assert await browser(demo_value, alice, "demo.client.stats.opens") == 1, "never reconnected"
        renewals = int(await browser(lambda: alice.inner_text("#renewals")))
        assert renewals >= 2
        assert await browser(lambda: alice.evaluate("() => window.notReloaded === true"))
        assert service.notifications.is_user_connected("alice")

        async with connect(service, "bob") as bob:
            await bob.request({"type": "join_room", "room": "project_42"})
            await bob.request(
                {"type": "room_message", "room": "project_42", "data": "still there?"}
            )
            await browser(sees, alice, "still there?")
        await browser(close_pages, alice)


async def test_frames_missed_while_offline_are_recovered_on_reconnect(browser: Browser) -> None:
    async with demo_service() as service:
        alice = await browser(sign_in, browser, base_url(service), "alice")
        await browser(join, alice, "project_42")
        async with connect(service, "bob") as bob:
            await bob.request({"type": "join_room", "room": "project_42"})
            await bob.request({"type": "room_message", "room": "project_42", "data": "before"})
            await browser(sees, alice, "before")
            await service.notifications.notify_user("alice", "Draft saved")
            await browser(toast, alice, "info", "Draft saved")

            # The browser goes offline and its connection drops.
            await browser(lambda: browser.context.set_offline(True))
            await browser(lambda: alice.evaluate("() => window.roomcastDemo.client.reconnect()"))
            members = service.notifications.get_room_members
            await eventually(lambda: "alice" not in members("project_42"), timeout=15)
            await browser(state, alice, "reconnecting")
            for text in ("missed one", "missed two", "missed three"):
                await bob.request({"type": "room_message", "room": "project_42", "data": text})
            await service.notifications.notify_user("alice", "Export ready while away",
                                                    level="success")

            # Back online: the page reconnects at once and gets what it missed, in order.
            await browser(lambda: browser.context.set_offline(False))
            await browser(state, alice, "open")
            await browser(sees, alice, "missed three")
            await browser(toast, alice, "success", "Export ready while away")
            texts = await browser(
                lambda: alice.locator("#log .entry-message .text").all_inner_texts()
            )
            assert texts[:4] == ["missed three", "missed two", "missed one", "before"], texts
            await browser(lambda: alice.locator(
                "#log .entry-success", has_text="Recovered 3 missed frames"
            ).wait_for())
            warnings = await browser(lambda: alice.locator("#log .entry-warning").count())
            assert warnings == 0, "everything was recovered"
            await bob.request({"type": "room_message", "room": "project_42", "data": "live again"})
            await browser(sees, alice, "live again")
        await browser(close_pages, alice)


async def test_the_paste_form_offers_the_services_own_websocket_port(browser: Browser) -> None:
    async with demo_service() as service:
        assert service.port != 8000

        def open_page() -> Any:
            from playwright.sync_api import expect

            page = browser.context.new_page()
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(base_url(service))
            expect(page.locator("#ws-url")).to_have_value(
                f"ws://127.0.0.1:{service.port}/api/v1/ws"
            )
            return page

        page = await browser(open_page)
        await browser(close_pages, page)


async def test_a_refused_join_is_dropped_not_left_pending_or_preselected(
    browser: Browser,
) -> None:
    async with demo_service(open_rooms=("team.*",)) as service:
        alice = await browser(sign_in, browser, base_url(service), "alice")
        await browser(join, alice, "team.ops")

        def join_a_closed_room() -> None:
            from playwright.sync_api import expect

            alice.fill("#room-name", "project_7")
            alice.click("#join")
            refusal = alice.locator("#log .entry-warning", has_text="project_7 is closed")
            expect(refusal).to_have_count(1)
            expect(alice.locator('#rooms li[data-room="project_7"]')).to_have_count(0)
            expect(alice.locator("#send-room option")).to_have_text(["team.ops", "user_alice"])
            expect(alice.locator("#send-room")).not_to_have_value("project_7")

        await browser(join_a_closed_room)
        assert await browser(demo_value, alice, "[...demo.client.rooms]") == ["team.ops"]
        await browser(close_pages, alice)


async def test_a_refused_origin_shows_a_hint_instead_of_reconnecting_silently(
    browser: Browser,
) -> None:
    async with demo_service(allowed_origins=("https://app.example.com",)) as service:

        def sign_in_refused() -> Any:
            from playwright.sync_api import expect

            page = browser.context.new_page()
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(base_url(service))
            hint = page.locator("#unreachable")
            expect(hint).to_be_hidden()
            page.fill("#user-id", "alice")
            page.click("#mint")
            expect(hint).to_be_visible()
            expect(hint).to_contain_text("--allowed-origins")
            return page

        page = await browser(sign_in_refused)
        assert await browser(demo_value, page, "demo.client.stats.opens") == 0
        await browser(close_pages, page)
