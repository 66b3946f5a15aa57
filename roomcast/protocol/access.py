"""Who may join a room, as pure rules: the patterns, the claim, the decision, the text.

Personal rooms stay as they are: only their owner, always joined. Every other room is
closed unless a rule opens it, and any one rule that allows is enough; the rules are
tried cheapest first (`Rule` lists them in that order). The first three are decided
here, with plain values; the room token is verified by `roomcast.auth`, and the two
authorizers are the application's (the connection actor awaits them under
`join_timeout`).

A pattern is a glob over the whole room name: `*` is any run of characters (none
included), `?` exactly one; every other character is itself (fnmatch's `[...]` is not
part of the rule). No pattern ever matches a personal room (`user_*`): someone else's
personal room is never opened by a pattern, whatever it is (`*`, `u*`, `user_*`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from roomcast.protocol.rules import is_personal_room

# A token's claim is the issuer's, but a pattern list bigger than this is a mistake:
# joining would cost a pass over all of them.
MAX_CLAIM_PATTERNS = 256


class Rule(enum.Enum):
    """What allowed a join, cheapest first: the order the connection tries them in."""

    PERSONAL = "personal room"
    OPEN_PATTERN = "open pattern"
    CLAIM = "rooms claim"
    ROOM_TOKEN = "room token"
    AUTHORIZER = "in-process authorizer"
    HTTP_AUTHORIZER = "HTTP authorizer"


def glob_matches(pattern: str, name: str) -> bool:
    """Whether `pattern` (`*` and `?`) matches the whole of `name`. Linear in practice
    and never worse than len(pattern) * len(name) (no regular expression to backtrack)."""
    p = n = 0
    star = -1  # where the last `*` was in the pattern
    resume = 0  # where in the name that `*` stopped swallowing
    while n < len(name):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == name[n]):
            p += 1
            n += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, n
            p += 1
        elif star >= 0:  # let the last `*` swallow one more character
            p = star + 1
            resume += 1
            n = resume
        else:
            return False
    return all(char == "*" for char in pattern[p:])


def any_opens(patterns: Iterable[str], room: str) -> bool:
    """Whether one of `patterns` opens `room`: a glob match, never a personal room."""
    return not is_personal_room(room) and any(glob_matches(p, room) for p in patterns)


def patterns_from_claim(value: object) -> tuple[str, ...]:
    """The room patterns a token's claim grants: a JSON list of strings, or one string
    of patterns separated by plain spaces (U+0020, as OAuth 2 scopes are: no other
    whitespace separates). Anything else, and non-string items, grant nothing."""
    if isinstance(value, str):
        patterns = tuple(part for part in value.split(" ") if part)
    elif isinstance(value, list):
        patterns = tuple(item for item in value if isinstance(item, str) and item)
    else:
        return ()
    return patterns[:MAX_CLAIM_PATTERNS]


def scope_values(value: object) -> tuple[str, ...]:
    """An OAuth 2 style scope claim: one string of values separated by plain spaces
    (U+0020 only: `"a\\u3000b"` is one value), or a JSON list of strings."""
    return patterns_from_claim(value)


@attrs.frozen
class RoomAccess:
    """The rules that need no waiting: the service's open patterns and, per user, the
    patterns of their token's claim."""

    open_patterns: tuple[str, ...] = ()

    def decide(self, room: str, own_personal_room: str,
               claim_patterns: tuple[str, ...]) -> Rule | None:
        """The first rule (of the cheap ones) that allows `room`, or None: then the
        room token and the authorizers are asked, in that order."""
        if room == own_personal_room:
            return Rule.PERSONAL
        if is_personal_room(room):
            return None
        if any_opens(self.open_patterns, room):
            return Rule.OPEN_PATTERN
        if any_opens(claim_patterns, room):
            return Rule.CLAIM
        return None


def refusal_text(room: str, *, rooms_claim: str, why: str | None = None) -> str:
    """The human text of a refused join: why, if a room token said, and how a room is
    opened."""
    reason = f" ({why})" if why else ""
    return (
        f"Not allowed: room {room} is closed{reason}; a room opens through the service's "
        f"open patterns (--open-rooms), a '{rooms_claim}' claim in your token, a room token "
        "in the join frame ('token'), or the application's authorizer"
    )

