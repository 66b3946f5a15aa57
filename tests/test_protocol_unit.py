"""Unit tests of `roomcast.protocol` with plain values: no Trio, no sockets.

The tables of docs/protocol.md (client frames, error codes, close codes) are checked row
by row, then hypothesis
holds `decode` to its contract: whatever the input, a `ClientFrame` or a
`ProtocolError`, and whatever it answers can be encoded and sent.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomcast.protocol import (
    CLIENT_TYPES,
    ClientFrame,
    ErrorCode,
    MessageType,
    Position,
    ProtocolError,
    ServerFrame,
    decode,
    encode,
    encode_frame,
    error_frame,
    message_text,
    normalize_user_id,
    position_from,
    rules,
    text_frame,
    validate_room_name,
)
from roomcast.protocol.notification import (
    Broadcast,
    Notification,
    RoomNotification,
    UserNotification,
    notification_request,
)
from roomcast.protocol.wsframe import frame_type

ROOM_TYPES = {"join_room", "leave_room", "room_message"}
DATA_TYPES = {"text", "room_message", "broadcast"}
ROOM_CHARS = "ABCXYZabcxyz0189_.:@-"

PREFIX = {
    ErrorCode.INVALID_MESSAGE: "Invalid message format:",
    ErrorCode.UNKNOWN_TYPE: "Unknown message type:",
    ErrorCode.ROOM_REQUIRED: "Room name is required",
    ErrorCode.INVALID_ROOM: "Invalid room name",
    ErrorCode.NOT_MEMBER: "Not a member of room",
    ErrorCode.FORBIDDEN: "Not allowed",
}


def refused(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(text)
    return info.value


def assert_error(text: str | bytes, code: ErrorCode) -> ProtocolError:
    error = refused(text)
    assert error.code == code, (text, error.code, error.message)
    assert error.message.startswith(PREFIX[code]), error.message
    return error


def frame_json(**fields: Any) -> str:
    return json.dumps(fields)


# decode: every valid client type --------------------------------------------------------


def test_decode_text():
    frame = decode(frame_json(type="text", data="hello"))
    assert frame == ClientFrame(type=MessageType.TEXT, data="hello", room=None)
    assert isinstance(frame.type, MessageType)


def test_decode_join_room():
    frame = decode(frame_json(type="join_room", room="lobby"))
    assert frame.type == MessageType.JOIN_ROOM
    assert frame.room == "lobby"
    assert frame.data is None


def test_decode_leave_room():
    frame = decode(frame_json(type="leave_room", room="a.b:c@d-e_f"))
    assert frame.type == MessageType.LEAVE_ROOM
    assert frame.room == "a.b:c@d-e_f"


def test_decode_room_message():
    frame = decode(frame_json(type="room_message", room="r1", data={"k": [1, 2]}))
    assert frame.type == MessageType.ROOM_MESSAGE
    assert frame.room == "r1"
    assert frame.data == {"k": [1, 2]}


def test_decode_broadcast():
    frame = decode(frame_json(type="broadcast", data="all"))
    assert frame.type == MessageType.BROADCAST
    assert frame.data == "all"


@pytest.mark.parametrize("data", ["", 0, 1.5, False, True, [], {}, [None], {"a": None}])
def test_decode_data_of_any_json_type(data):
    assert decode(frame_json(type="text", data=data)).data == data


def test_decode_extra_keys_are_ignored():
    frame = decode(frame_json(type="broadcast", data="x", extra=1, room=None))
    assert frame == ClientFrame(type=MessageType.BROADCAST, data="x")


def test_client_types_are_the_protocol_table():
    assert {str(t) for t in CLIENT_TYPES} == ROOM_TYPES | DATA_TYPES | {"refresh_token"}


# decode: the error table ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "nope", "{'type': 'text'}", '{"type": "text",}', "NaN", "Infinity",
     '{"type": "text", "data": NaN}', '{"type": "text", "data": -Infinity}',
     '{"type": "text", "data": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000,
     # Finite-looking numbers that parse to inf: no reply could encode them.
     '{"type": "text", "data": 1e999}', '{"type": "broadcast", "data": [-1e400]}',
     '{"type": "room_message", "room": "r", "data": {"x": 1.8e308}}'],
    ids=lambda t: t[:30],
)
def test_not_json(text):
    assert_error(text, ErrorCode.INVALID_MESSAGE)


def test_binary_frames_are_refused():
    assert_error(b'{"type": "text", "data": "x"}', ErrorCode.INVALID_MESSAGE)


@pytest.mark.parametrize("text", ["[]", '[{"type": "text", "data": "x"}]', "1", "1.5",
                                  '"text"', "null", "true", "false"])
def test_not_an_object(text):
    assert_error(text, ErrorCode.INVALID_MESSAGE)


@pytest.mark.parametrize(
    "fields",
    [
        {},  # no type at all
        {"type": None, "data": "x"},
        {"type": 1, "data": "x"},
        {"type": ["text"], "data": "x"},
        {"type": {"t": "text"}, "data": "x"},
        {"type": True, "data": "x"},
        {"type": "join_room", "room": 5},
        {"type": "join_room", "room": ["lobby"]},
        {"type": "leave_room", "room": {"name": "lobby"}},
        {"type": "room_message", "room": True, "data": "x"},
        {"type": "room_message", "room": 1.5, "data": "x"},
        {"type": "text", "data": "x", "room": 7},  # a wrong type even where unused
        {"type": "text"},  # data missing
        {"type": "text", "data": None},
        {"type": "broadcast"},
        {"type": "room_message", "room": "r"},
    ],
    ids=repr,
)
def test_wrong_field_types_and_missing_data(fields):
    assert_error(json.dumps(fields), ErrorCode.INVALID_MESSAGE)


@pytest.mark.parametrize(
    "type_", ["", "TEXT", "Text", "info", "error", "notification", "join", "text ", "ping"]
)
def test_unknown_type(type_):
    error = assert_error(frame_json(type=type_, data="x", room="r"), ErrorCode.UNKNOWN_TYPE)
    assert type_ in error.message


def test_unknown_type_message_is_bounded():
    error = assert_error(frame_json(type="x" * 10_000), ErrorCode.UNKNOWN_TYPE)
    assert len(error.message) < 200


@pytest.mark.parametrize("type_", sorted(ROOM_TYPES))
@pytest.mark.parametrize("room", ["absent", None])
def test_room_required(type_, room):
    fields: dict[str, Any] = {"type": type_, "data": "x"}
    if room != "absent":
        fields["room"] = room
    assert_error(json.dumps(fields), ErrorCode.ROOM_REQUIRED)


INVALID_ROOMS = [
    "",
    "a" * 101,
    "x" * 1000,
    "two words",
    " lead",
    "trail ",
    "tab\there",
    "new\nline",
    "trailing-newline\n",
    "café",
    "комната",
    "房间",
    "emoji😀",
    "\uff41\uff42\uff43",  # fullwidth "abc"
    "١٢٣",  # Arabic-Indic digits
    "slash/room",
    "back\\slash",
    "q?x=1",
    "hash#",
    "star*",
    "comma,",
    "semi;",
    "plus+",
    "null\x00byte",
]


@pytest.mark.parametrize("type_", sorted(ROOM_TYPES))
@pytest.mark.parametrize("room", INVALID_ROOMS, ids=repr)
def test_invalid_room_names(type_, room):
    assert_error(frame_json(type=type_, room=room, data="x"), ErrorCode.INVALID_ROOM)


@pytest.mark.parametrize(
    "room", ["a", "a" * 100, "Z" * 99 + "9", ROOM_CHARS, "user_7", "team:42@eu-west.1", "-", "."]
)
def test_valid_room_names(room):
    assert validate_room_name(room) == room
    assert decode(frame_json(type="join_room", room=room)).room == room


def test_room_name_length_boundary():
    assert validate_room_name("r" * 100)
    with pytest.raises(ProtocolError) as info:
        validate_room_name("r" * 101)
    assert info.value.code == ErrorCode.INVALID_ROOM


def test_lone_surrogates_are_refused_not_crashing_the_reply():
    # "\ud800" is legal JSON escape syntax but no Unicode text: the echo of it could
    # not be encoded as UTF-8, which used to kill the connection with 1011.
    for text in ['{"type": "text", "data": "\\ud800"}',
                 '{"type": "\\udfff"}',
                 '{"type": "room_message", "room": "r", "data": {"\\udc00": 1}}']:
        error = assert_error(text, ErrorCode.INVALID_MESSAGE)
        assert encode_frame(error_frame(error))
    # A surrogate pair escape is one ordinary character.
    assert decode('{"type": "text", "data": "\\ud83d\\ude00"}').data == "😀"


# errors become frames ---------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(PREFIX))
def test_error_frames_follow_the_table(code):
    error = {
        ErrorCode.INVALID_MESSAGE: ProtocolError.invalid("x"),
        ErrorCode.UNKNOWN_TYPE: ProtocolError.unknown_type("x"),
        ErrorCode.ROOM_REQUIRED: ProtocolError.room_required(),
        ErrorCode.INVALID_ROOM: ProtocolError.invalid_room(rules.ROOM_NAME_RULE),
        ErrorCode.NOT_MEMBER: ProtocolError.not_member("r"),
        ErrorCode.FORBIDDEN: ProtocolError.forbidden("x"),
    }[code]
    assert error.code == code
    wire = json.loads(encode(error_frame(error)))
    assert wire["type"] == "error"
    assert wire["message"].startswith(PREFIX[code])
    assert wire["data"] == {"code": str(code)}
    assert wire["room"] is None


# encode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        ServerFrame(type=MessageType.INFO, message="hi"),
        ServerFrame(type=MessageType.TEXT, message="Echo: x"),
        ServerFrame(type=MessageType.ROOM_MESSAGE, message="m", room="r", data={"a": 1}),
        ServerFrame(type=MessageType.BROADCAST, message="", data={}),
        ServerFrame(type=MessageType.ERROR, message="e", data={"code": "forbidden"}),
    ],
    ids=repr,
)
def test_encode_has_the_four_keys(frame):
    text = encode(frame)
    wire = json.loads(text)
    assert set(wire) == {"type", "message", "data", "room"}
    assert wire == {"type": str(frame.type), "message": frame.message, "data": frame.data,
                    "room": frame.room}
    assert ": " not in text.replace(frame.message, "")  # compact separators


def test_encode_keeps_non_ascii_text():
    text = encode(ServerFrame(type=MessageType.INFO, message="héllo 房间 😀"))
    assert "héllo 房间 😀" in text
    assert json.loads(encode_frame(ServerFrame(type=MessageType.INFO, message="é"))[2:])


def test_encode_frame_is_text_frame_of_encode():
    frame = ServerFrame(type=MessageType.INFO, message="x" * 300, data={"k": "v"})
    assert encode_frame(frame) == text_frame(encode(frame).encode())


# message_text ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["", "hello", '{"not": "parsed"}', "😀", "null"])
def test_message_text_of_a_string_is_the_string(data):
    assert message_text(data) == (data, {})


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "two", None], '[1,"two",null]'),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ({}, "{}"),
        ({"é": "房"}, '{"é":"房"}'),
    ],
    ids=repr,
)
def test_message_text_of_anything_else_is_compact_json_with_payload(data, text):
    message, extra = message_text(data)
    assert message == text
    assert extra == {"payload": data}
    assert extra["payload"] is data


# normalize_user_id --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42),
        (0, 0),
        ("42", 42),
        ("0", 0),
        ("007", 7),
        ("abc", "abc"),
        ("alice@example.com", "alice@example.com"),
        ("a-b_c.d:e", "a-b_c.d:e"),
        ("42a", "42a"),
        ("u" * 95, "u" * 95),
    ],
)
def test_normalize_user_id(value, expected):
    result = normalize_user_id(value)
    assert result == expected
    assert type(result) is type(expected)


def test_int_and_digit_string_name_the_same_user():
    assert normalize_user_id(42) == normalize_user_id("42")


@pytest.mark.parametrize(
    "value",
    [True, False, 1.0, 42.5, float("nan"), "", None, [], {}, [42], b"42", "a b", "é",
     "u" * 96, "x/y"],
    ids=repr,
)
def test_normalize_user_id_refuses(value):
    with pytest.raises(ValueError):
        normalize_user_id(value)


# one definition per rule ---------------------------------------------------------------


def test_the_openapi_patterns_are_the_rules():
    from roomcast.config import Config
    from roomcast.http import openapi

    schemas = openapi.document(Config())["components"]["schemas"]
    assert schemas["RoomName"]["pattern"] == rules.ROOM_NAME_PATTERN
    text, integer = schemas["UserId"]["anyOf"][1], schemas["UserId"]["anyOf"][0]
    assert text["pattern"] == rules.USER_ID_TEXT_PATTERN
    assert integer["maximum"] == rules.MAX_INT_USER_ID


def test_the_js_client_checks_room_names_by_the_same_pattern():
    source = (Path(rules.__file__).parents[1] / "web" / "roomcast.js").read_text()
    assert f"export const ROOM_NAME = /{rules.ROOM_NAME_PATTERN}/;" in source


def test_the_protocol_error_states_the_rule():
    assert ProtocolError.invalid_room(rules.ROOM_NAME_RULE).message.endswith(rules.ROOM_NAME_RULE)


@given(st.text(alphabet=ROOM_CHARS + " /*é\n", max_size=110))
def test_room_name_pattern_and_validators_agree(name):
    allowed = re.fullmatch(rules.ROOM_NAME_PATTERN, name) is not None
    try:
        rules.room_name(name)
        accepted = True
    except ValueError as exc:
        assert str(exc) == f"Invalid room name: {rules.ROOM_NAME_RULE}"
        accepted = False
    assert accepted is allowed
    try:
        validate_room_name(name)
        assert allowed
    except ProtocolError:
        assert not allowed


@given(st.text(alphabet=ROOM_CHARS + " /*é", max_size=100))
def test_user_id_text_pattern_and_normalize_agree(text):
    """A string the OpenAPI document allows names a user, and one it refuses does not
    (a digit string names an int user; up to 40 digits)."""
    allowed = re.fullmatch(rules.USER_ID_TEXT_PATTERN, text) is not None
    assert (rules.user_id_or_none(text) is not None) is allowed


def test_room_name_refuses_non_strings_with_a_type_error():
    for value in (None, 5, ["r"], b"r"):
        with pytest.raises(TypeError, match="Invalid room name"):
            rules.room_name(value)


def test_user_id_errors_name_the_rule():
    with pytest.raises(ValueError, match=r"^Invalid user id: "):
        normalize_user_id(1.5)
    assert rules.user_id_or_none("a b") is None
    assert rules.user_id_or_none("007") == 7


# notification arguments: one class for the facade and the HTTP API ---------------------

BAD_ARGUMENTS = [
    ({"message": 5}, TypeError, "'message' is required, a string"),
    ({"message": None}, TypeError, "'message' is required, a string"),
    ({"message": "m", "level": "loud"}, ValueError, "'level' is one of info, success, "
                                                    "warning, error"),
    ({"message": "m", "level": "INFO"}, ValueError, "'level' is one of"),
    ({"message": "m", "level": ["info"]}, ValueError, "'level' is one of"),
    ({"message": "m", "data": [1]}, TypeError, "'data' is an object or null"),
    ({"message": "m", "data": "x"}, TypeError, "'data' is an object or null"),
]


@pytest.mark.parametrize(("fields", "error", "text"), BAD_ARGUMENTS, ids=repr)
@pytest.mark.parametrize("target", [{"user_id": 1}, {"room": "r"}, {"broadcast": True}],
                         ids=repr)
def test_the_facade_and_the_http_body_refuse_alike(fields, error, text, target):
    cls = {"user_id": UserNotification, "room": RoomNotification,
           "broadcast": Broadcast}[next(iter(target))]
    with pytest.raises(error) as built:  # as the facade builds it
        cls(**fields, **target)
    with pytest.raises(error) as structured:  # as the HTTP API structures its body
        notification_request({**fields, **target})
    assert str(built.value) == str(structured.value)
    assert str(built.value).startswith(text)


@pytest.mark.parametrize(("body", "error", "text"), [
    ({"user_id": "a b", "message": "m"}, ValueError, "Invalid user id: "),
    ({"user_id": None, "message": "m"}, ValueError, "Invalid user id: "),
    ({"room": "*", "message": "m"}, ValueError, f"Invalid room name: {rules.ROOM_NAME_RULE}"),
    ({"room": 5, "message": "m"}, TypeError, f"Invalid room name: {rules.ROOM_NAME_RULE}"),
    ({"broadcast": False, "message": "m"}, ValueError, "'broadcast' must be true"),
    ({"broadcast": True}, TypeError, "'message' is required, a string"),
    ({"broadcast": True, "message": "m", "extra": 1, "zz": 2}, ValueError,
     "Unknown field: 'extra'"),
    ({"broadcast": True, "message": 5, "extra": 1}, ValueError, "Unknown field: 'extra'"),
    ({"message": "m"}, ValueError, "Give exactly one of 'user_id', 'room' or 'broadcast'"),
    ({"user_id": 1, "room": "r", "message": "m"}, ValueError, "Give exactly one of"),
    ([1], TypeError, "The body must be a JSON object"),
], ids=repr)
def test_notification_requests_refused_with_the_rules_text(body, error, text):
    with pytest.raises(error) as info:
        notification_request(body)
    assert str(info.value).startswith(text)


def test_notification_requests_structure_to_their_form():
    assert notification_request({"user_id": "007", "message": "m", "level": "success",
                                 "data": {"k": 1}}) == UserNotification(
        "m", "success", {"k": 1}, user_id=7)
    assert notification_request({"room": "r", "message": "m", "data": None}) == (
        RoomNotification("m", room="r"))
    assert notification_request({"broadcast": True, "message": "m"}) == Broadcast("m")


def test_a_notification_body_keeps_the_protocol_keys():
    note = Notification("hi", "warning", {"level": "mine", "notification": 0, "k": 1})
    body = json.loads(note.body(MessageType.ROOM_MESSAGE, "r"))
    assert body == {"type": "room_message", "message": "hi", "room": "r",
                    "data": {"k": 1, "level": "warning", "notification": True}}


# join_room's data ------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "position"), [
    (None, None), ({}, None), ({"recover": 1}, None), ({"recover": True}, Position()),
    ({"offset": 0, "epoch": "e", "other": 1}, Position(offset=0, epoch="e")),
    ({"offset": None, "epoch": None, "recover": True}, Position()),
], ids=repr)
def test_join_data_structures_to_a_position(data, position):
    assert position_from(data) == position


@pytest.mark.parametrize(("data", "why"), [
    ([1], "join_room 'data' is an object"), ("x", "join_room 'data' is an object"),
    ({"offset": 3}, "'epoch' is the string"), ({"epoch": "e"}, "'offset' is a whole number"),
    ({"offset": -1, "epoch": "e"}, "'offset'"), ({"offset": True, "epoch": "e"}, "'offset'"),
    ({"offset": 1.0, "epoch": "e"}, "'offset'"), ({"offset": 1, "epoch": ""}, "'epoch'"),
    ({"offset": 1, "epoch": "x" * 65}, "'epoch'"), ({"offset": 1, "epoch": 5}, "'epoch'"),
], ids=repr)
def test_join_data_refused_with_the_rules_text(data, why):
    with pytest.raises(ProtocolError) as info:
        position_from(data)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert info.value.message.startswith(f"Invalid message format: {why}")


# presence messages -----------------------------------------------------------------------


def test_presence_round_trips_through_the_converter():
    from roomcast.actors.presence import Presence

    presence = Presence({"b", "a", "10"}, {"r": {"z", "y"}})
    data = presence.to_json()
    assert data == {"users": ["10", "a", "b"], "rooms": {"r": ["y", "z"]}}
    assert Presence.from_json(json.loads(json.dumps(data))) == presence
    assert Presence.from_json({}) == Presence()


@pytest.mark.parametrize("data", [[], None, "x", {"users": [1]}, {"rooms": []},
                                  {"rooms": {"r": [None]}}], ids=repr)
def test_a_malformed_presence_message_raises_what_the_subscriber_ignores(data):
    from roomcast.actors.presence import Presence

    with pytest.raises((TypeError, ValueError)):
        Presence.from_json(data)


# frame_type -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("type_", list(MessageType))
def test_frame_type_reads_every_type_past_every_header_size(type_, size):
    frame = encode_frame(ServerFrame(type=type_, message="x" * size))
    assert frame_type(frame) == type_.value


@pytest.mark.parametrize("frame", [b"", b"\x81", b"\x89\x00", text_frame(b'{"type":"nope"}'),
                                   text_frame(b"[]"), text_frame(b'{"type":"' + b"x" * 40)],
                         ids=repr)
def test_frame_type_of_anything_else_is_other(frame):
    assert frame_type(frame) == "other"


# text_frame -------------------------------------------------------------------------------


def parse_with_wsproto(frame: bytes) -> str:
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(frame)
    frames = list(protocol.received_frames())
    assert len(frames) == 1
    (parsed,) = frames
    assert parsed.opcode == Opcode.TEXT
    assert parsed.frame_finished and parsed.message_finished
    return parsed.payload


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e" + struct.pack("!H", 126)),
        (65535, b"\x81\x7e" + struct.pack("!H", 65535)),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),
        (70000, b"\x81\x7f" + struct.pack("!Q", 70000)),
    ],
)
def test_text_frame_headers(size, header):
    payload = b"x" * size
    frame = text_frame(payload)
    assert frame == header + payload
    # FIN set, no RSV bits, opcode 1; no mask bit (server frames are unmasked).
    assert frame[0] == 0x81
    assert frame[1] & 0x80 == 0
    assert parse_with_wsproto(frame) == payload.decode()


def test_text_frame_with_multibyte_utf8_counts_bytes():
    payload = ("é" * 100).encode()  # 200 bytes, 100 characters
    frame = text_frame(payload)
    assert frame[:4] == b"\x81\x7e" + struct.pack("!H", 200)
    assert parse_with_wsproto(frame) == "é" * 100


# hypothesis: decode never raises anything but ProtocolError -------------------------------

def examples(n: int) -> Any:
    # Counts chosen so that the whole file runs in well under 20 s.
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Text that may hold lone surrogates, as a JSON escape can produce them.
any_text = st.text() | st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=5
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(any_text, children, max_size=5),
    max_leaves=10,
)

valid_rooms = st.text(ROOM_CHARS, min_size=1, max_size=100)
rooms = st.one_of(
    valid_rooms,
    st.text(max_size=120),
    st.just(""),
    st.just("r" * 100),
    st.just("r" * 101),
    st.none(),
    json_values,
)
types = st.one_of(
    st.sampled_from(sorted(ROOM_TYPES | DATA_TYPES)),
    st.sampled_from(["info", "error", "notification", "TEXT", "", "join"]),
    any_text,
    json_values,
)
MISSING = object()


def check_contract(text: str | bytes) -> ClientFrame | ProtocolError:
    """decode's contract, and that whatever it answers can be put on the wire."""
    try:
        frame = decode(text)
    except ProtocolError as error:
        assert error.code in PREFIX
        assert error.message.startswith(PREFIX[error.code])
        assert encode_frame(error_frame(error))
        return error
    assert isinstance(frame, ClientFrame)
    assert frame.type in CLIENT_TYPES
    if frame.type in ROOM_TYPES:
        assert isinstance(frame.room, str)
        validate_room_name(frame.room)
    if frame.type in DATA_TYPES:
        assert frame.data is not None
        # The echo (or room/broadcast copy) of the data must be sendable.
        message, extra = message_text(frame.data)
        assert encode_frame(ServerFrame(type=frame.type, message=message, data=extra))
    return frame


@examples(3000)
@given(st.text())
def test_decode_arbitrary_text(text):
    check_contract(text)


@examples(400)
@given(json_values)
def test_decode_arbitrary_json(value):
    text = json.dumps(value)
    result = check_contract(text)
    if not isinstance(value, dict):
        assert isinstance(result, ProtocolError)
        assert result.code == ErrorCode.INVALID_MESSAGE


@examples(200)
@given(json_values)
def test_decode_arbitrary_json_non_ascii(value):
    # The same values, with non-ASCII text sent as itself rather than as \u escapes.
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode()
    except UnicodeEncodeError:
        return  # lone surrogates cannot travel unescaped in a text frame
    check_contract(text)


def has_surrogate(value: Any) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False))


def expected_codes(fields: dict[str, Any]) -> set[ErrorCode]:
    """The error codes the table allows for these fields (empty: the frame is valid)."""
    if has_surrogate(fields):
        return {ErrorCode.INVALID_MESSAGE}  # refused as it is parsed
    type_ = fields.get("type")
    if not isinstance(type_, str):
        return {ErrorCode.INVALID_MESSAGE}
    if type_ not in ROOM_TYPES | DATA_TYPES:
        return {ErrorCode.UNKNOWN_TYPE}
    codes: set[ErrorCode] = set()
    room = fields.get("room")
    if room is not None and not isinstance(room, str):
        codes.add(ErrorCode.INVALID_MESSAGE)
    if type_ in ROOM_TYPES:
        if room is None:
            codes.add(ErrorCode.ROOM_REQUIRED)
        elif isinstance(room, str) and not (
            1 <= len(room) <= 100 and all(c in ROOM_CHARS or (c.isascii() and c.isalnum())
                                          for c in room)
        ):
            codes.add(ErrorCode.INVALID_ROOM)
    if type_ in DATA_TYPES and fields.get("data") is None:
        codes.add(ErrorCode.INVALID_MESSAGE)
    if type_ == "join_room" and not is_position(fields.get("data")):
        codes.add(ErrorCode.INVALID_MESSAGE)
    return codes


def is_position(data: Any) -> bool:
    """join_room's optional `data`: nothing, or a recovery position."""
    if data is None:
        return True
    if not isinstance(data, dict):
        return False
    offset, epoch = data.get("offset"), data.get("epoch")
    if offset is None and epoch is None:
        return True
    return (
        isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
        and isinstance(epoch, str) and 0 < len(epoch) <= 64
    )


@examples(500)
@given(
    st.fixed_dictionaries(
        {},
        optional={"type": types, "room": rooms, "data": json_values, "extra": json_values},
    )
)
def test_decode_frame_shaped_dicts(fields):
    result = check_contract(json.dumps(fields))
    codes = expected_codes(fields)
    if isinstance(result, ProtocolError):
        assert result.code in codes, (fields, result.message)
    else:
        assert not codes, (fields, result)
        assert result.type == fields["type"]
        assert result.data == fields.get("data")
        assert result.room == fields.get("room")


@examples(200)
@given(
    st.sampled_from(sorted(ROOM_TYPES | DATA_TYPES)),
    valid_rooms,
    json_values.filter(lambda v: v is not None),
)
def test_decode_valid_frames_round_trip(type_, room, data):
    if type_ == "join_room":
        data = {"offset": abs(hash(room)) % 1000, "epoch": room[:64]}
    fields = {"type": type_, "room": room, "data": data}
    if has_surrogate(fields):
        return
    frame = decode(json.dumps(fields))
    assert frame == ClientFrame(type=MessageType(type_), data=data, room=room)


@examples(3000)
@given(st.binary())
def test_decode_random_bytes(data):
    result = check_contract(data)
    assert isinstance(result, ProtocolError)
    assert result.code == ErrorCode.INVALID_MESSAGE
    check_contract(data.decode("utf-8", errors="replace"))
    check_contract(data.decode("latin-1"))
