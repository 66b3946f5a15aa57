"""The documents stay true: docs/protocol.md's examples are replayed against a live
service, docs/configuration.md's table is generated from `Config`, the README stays a
short front door, and every relative link in the documents leads somewhere.

docs/protocol.md:

Every ```json block in the document is preceded by an HTML comment that says what it
is. The first line of the comment is one of:

- `on-connect`: the block is the first frame a new connection receives;
- `reply-to: JSON` / `reply-to-text: TEXT`: send that frame (JSON, or raw text) and
  the block is the frame that comes back;
- `facade: CALL`: a notification facade call, e.g. `notify_user(user_id=7, ...)`;
  the block is the frame the connected client receives;
- `handshake: PATH` with a `status: N` line: the block is the JSON body of the
  refused handshake (`{token}` and `{expired_token}` are filled in);
- `client-frame`: the block is a frame a client sends; it must decode.

Further lines: `after: JSON` (a frame to send first, whose reply is skipped),
`scope: S` (the token's scope), `crash-room: R` (room R crashes on the next message),
`config: JSON` (settings for the service, e.g. a small limit), `vary: PATH` (a field
whose value varies, such as `data.expires_at`: only its JSON type is checked).
In `reply-to`, `$TOKEN_FOR_<user>` stands for a fresh token of that user, and
`$ROOM_TOKEN(<user>,<room>,<seconds>)` for a room token of that user and room, valid
for that long. `skip: N`: the block is the frame after the next N.

The connected client is user 7. A string in a block that ends with `...` matches any
text that starts with what precedes it; everything else must be equal, key for key.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from roomcast import Config
from roomcast.protocol import CLIENT_TYPES, CloseCode, ErrorCode, decode

from .conftest import connect, running, token_for

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
USER = 7

_BLOCK = re.compile(r"^```json\n(.*?)^```", re.DOTALL | re.MULTILINE)
REPRODUCIBLE = {"on-connect", "reply-to", "reply-to-text", "facade", "handshake"}
KINDS = REPRODUCIBLE | {"client-frame"}


@attrs.frozen
class Example:
    line: int
    kind: str
    arg: str
    options: dict[str, list[str]]
    body: Any

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.kind}"

    def option(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[-1] if values else None


def _parse_marker(comment: str) -> tuple[str, str, dict[str, list[str]]]:
    lines = [line.strip() for line in comment.strip().splitlines() if line.strip()]
    kind, _, arg = lines[0].partition(":")
    options: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        options.setdefault(name.strip(), []).append(value.strip())
    return kind.strip(), arg.strip(), options


def examples() -> list[Example]:
    text = DOC.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip()
        if not before.endswith("-->"):
            raise AssertionError(f"docs/protocol.md:{line}: a json block with no marker comment")
        comment = before[before.rindex("<!--") + len("<!--") : -len("-->")]
        kind, arg, options = _parse_marker(comment)
        body = json.loads(match.group(1))
        found.append(Example(line, kind, arg, options, body))
    return found


EXAMPLES = examples()


def _json_type(value: Any) -> str:
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else (
        type(value).__name__
    )


def matches(
    doc: Any, actual: Any, where: str = "frame", vary: frozenset[str] = frozenset()
) -> None:
    """Assert `actual` has the documented keys and values (`...` ends a prefix; the
    paths in `vary` need only the same JSON type)."""
    path = where.partition(".")[2]
    if path in vary:
        assert _json_type(doc) == _json_type(actual), f"{where}: {actual!r} is not like {doc!r}"
    elif isinstance(doc, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        assert set(doc) == set(actual), f"{where}: keys {sorted(doc)} != {sorted(actual)}"
        for key, value in doc.items():
            matches(value, actual[key], f"{where}.{key}", vary)
    elif isinstance(doc, list):
        assert isinstance(actual, list) and len(doc) == len(actual), f"{where}: {actual!r}"
        for i, (d, a) in enumerate(zip(doc, actual, strict=True)):
            matches(d, a, f"{where}[{i}]", vary)
    elif isinstance(doc, str) and doc.endswith("..."):
        assert isinstance(actual, str) and actual.startswith(doc[:-3]), f"{where}: {actual!r}"
    else:
        assert type(doc) is type(actual) and doc == actual, f"{where}: {actual!r} != {doc!r}"


def test_every_json_block_is_labelled():
    assert EXAMPLES, "no json blocks found"
    for example in EXAMPLES:
        assert example.kind in KINDS, f"line {example.line}: unknown marker {example.kind!r}"


@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if e.kind == "client-frame"],
    ids=lambda e: e.id,
)
def test_client_frame_examples_decode(example: Example):
    frame = decode(json.dumps(example.body))
    assert frame.type in CLIENT_TYPES


async def _handshake(service: Any, example: Example) -> None:
    path = example.arg.format(
        token=token_for(USER, service.config),
        expired_token=token_for(USER, service.config, extra={"exp": int(time.time()) - 3600}),
    )
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(f"ws://127.0.0.1:{service.port}{path}"):
            pass
    assert rejected.value.status_code == int(example.option("status") or 0)
    matches(example.body, json.loads(rejected.value.body), "body")


async def _crash_next_message(service: Any, room_name: str) -> None:
    room = service.registry.room(room_name)
    assert room is not None, f"crash-room: no room {room_name!r}"
    original = room.handle

    async def crash_once(message: Any) -> None:
        room.handle = original
        raise RuntimeError("injected by test_docs")

    room.handle = crash_once


@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if e.kind in REPRODUCIBLE],
    ids=lambda e: e.id,
)
async def test_documented_server_frame_is_what_the_service_sends(example: Example):
    async with running(**json.loads(example.option("config") or "{}")) as service:
        if example.kind == "handshake":
            await _handshake(service, example)
            return
        async with connect(service, USER, scope=example.option("scope")) as client:
            if example.kind == "on-connect":
                matches(example.body, client.welcome, "welcome")
                return
            for frame in example.options.get("after", []):
                await client.request(json.loads(frame))
            if example.option("crash-room"):
                await _crash_next_message(service, example.option("crash-room"))
            if example.kind == "reply-to":
                arg = re.sub(
                    r"\$TOKEN_FOR_(\w+)",
                    lambda m: token_for(m.group(1), service.config),
                    example.arg,
                )
                arg = re.sub(
                    r"\$ROOM_TOKEN\((\w+),([^,]+),(\d+)\)",
                    lambda m: token_for(m.group(1), service.config, ttl=float(m.group(3)),
                                        extra={"room": m.group(2)}),
                    arg,
                )
                await client.send(json.loads(arg))
            elif example.kind == "reply-to-text":
                await client.send(example.arg)
            else:
                facade = service.notifications
                calls = {
                    name: getattr(facade, name)
                    for name in ("notify_user", "notify_room", "broadcast", "notify_user_in_room")
                }
                with trio.fail_after(5):
                    await eval(example.arg, {"__builtins__": {}}, calls)
            for _ in range(int(example.option("skip") or 0)):
                await client.recv()
            vary = frozenset(example.options.get("vary", []))
            matches(example.body, await client.recv(positions=True), vary=vary)


def _section(title_start: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title_start}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _first_column(section: str) -> set[str]:
    """The backquoted first cells of the section's table rows, header rows left out."""
    lines = section.splitlines()
    cells = set()
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        cell = re.match(r"\| `([^`]+)` \|", line)
        if cell and not following.startswith("| ---"):
            cells.add(cell.group(1))
    return cells


def test_every_error_code_is_documented():
    documented = _first_column(_section("5. Errors"))
    assert documented == {code.value for code in ErrorCode}


def test_every_close_code_is_documented():
    documented = _first_column(_section("7. When the connection closes"))
    browser_only = {"1006"}
    assert documented - browser_only == {str(code.value) for code in CloseCode}


def test_every_client_frame_type_has_a_section():
    section = _section("4. Frames you send")
    titled = set(re.findall(r"^### `([a-z_]+)`", section, re.MULTILINE))
    assert titled == {t.value for t in CLIENT_TYPES}


def test_every_error_code_has_a_checked_example():
    codes = {
        e.body["data"]["code"]
        for e in EXAMPLES
        if e.kind in REPRODUCIBLE and isinstance(e.body, dict) and e.body.get("type") == "error"
    }
    assert codes == {code.value for code in ErrorCode}


# docs/configuration.md ----------------------------------------------------------------


def config_table() -> str:
    """docs/configuration.md's settings table, from the fields of `Config` and their help.

    To refresh it: `.venv/bin/python -c "from tests.test_docs import config_table;
    print(config_table())"`, and paste between the markers."""

    def default(field: attrs.Attribute) -> str:
        value = field.default
        if value is None:
            return "unset"
        if value == ():
            return "see meaning"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value}`"

    def flag(field: attrs.Attribute) -> str:
        name = field.name.replace("_", "-")
        if field.type in ("bool", bool):
            return f"`--{name}` / `--no-{name}`"
        return f"`--{name}`"

    rows = [
        "| setting | flag | environment | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for field in attrs.fields(Config):
        meaning = field.metadata["help"].replace("*", "\\*")
        rows.append(
            f"| `{field.name}` | {flag(field)} | `ROOMCAST_{field.name.upper()}` "
            f"| {default(field)} | {meaning} |"
        )
    return "\n".join(rows)


def test_configuration_table_matches_config():
    text = CONFIGURATION.read_text(encoding="utf-8")
    start = text.index("<!-- config-table:")
    start = text.index("-->", start) + len("-->")
    end = text.index("<!-- /config-table -->")
    assert text[start:end].strip() == config_table()


# README.md ----------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ")
    first_block = lines[lines.index("```") : lines.index("```") + 4]
    assert first_block == [
        "```",
        "./dev.sh serve        # run the service with a dev secret; open the demo at "
        "http://127.0.0.1:8080/",
        "./dev.sh test         # run every test",
        "```",
    ]
    before = [line for line in lines[1 : lines.index("```")] if line.strip()]
    assert len(before) == 1, "only a one-sentence pitch between the title and the commands"


def test_readme_is_a_front_door():
    """The manual lives in docs/; the README stays short enough to read at once."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move the detail to docs/"


# Links ----------------------------------------------------------------------------------

LINKED = [
    README,
    ROOT / "ARCHITECTURE.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: Path) -> set[str]:
    """The #anchors GitHub gives the headings of `markdown` (duplicates get -1, -2...)."""
    anchors: set[str] = set()
    text = _FENCE.sub("", markdown.read_text(encoding="utf-8"))
    for title in re.findall(r"^#{1,6} (.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_anchor_slugs_follow_github():
    assert {"6b-positions-history-and-recovery", "refresh_token", "5-errors"} <= _anchors(DOC)


@pytest.mark.parametrize("document", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(document: Path):
    text = _FENCE.sub("", document.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)
