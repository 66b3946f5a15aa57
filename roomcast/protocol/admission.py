"""Pending handshakes: sockets accepted but not yet through an authenticated upgrade.

Anyone who can open a TCP connection can hold a socket open without saying a word, for
up to `handshake_timeout`. These sockets are bounded apart from the authenticated
connections (`max_connections`), so that they can never crowd those out:

- **per address**: at most `per_address` pending sockets from one IP address (an IPv6
  address counts by its /64, the block one host is usually given); a socket past it is
  refused at once;
- **in total**: at most `total` pending sockets. When the total is reached, a new
  socket is still let in and the *oldest* pending one is evicted instead. A real
  client's upgrade request comes with its first packet and is through in a round trip,
  so the oldest pending socket is the silent one: to push a real client out, an
  attacker would have to open `total` sockets within that round trip.

`Admission` keeps the counts and decides; it never waits and knows no socket (the
gateway holds the sockets and closes what it is told to).
"""

from __future__ import annotations

import enum
import ipaddress

import attrs


def address_key(host: str) -> str:
    """The key an address is counted under: an IPv4 address itself, an IPv6 address's
    /64 (an IPv4-mapped IPv6 address counts as its IPv4 address). Anything that is not
    an IP address (never, for a TCP peer) counts as itself."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # drop an IPv6 zone
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Refusal(enum.Enum):
    """Why a socket was not let in; the value is its `handshake_failures` cause."""

    TOO_MANY_FROM_ADDRESS = "too_many_handshakes_from_address"


EVICTED = "too_many_handshakes"
"""The `handshake_failures` cause of a pending socket evicted to let a newer one in."""


@attrs.frozen
class Ticket:
    """One pending socket: released exactly once, by its handshake's end or an eviction."""

    number: int
    address: str


@attrs.frozen
class Admitted:
    ticket: Ticket
    evicted: Ticket | None = None  # the oldest pending socket, to be closed now


@attrs.define
class Admission:
    """The pending sockets, in arrival order, counted in total and per address."""

    total: int
    per_address: int  # 0: no limit per address
    _pending: dict[int, Ticket] = attrs.field(factory=dict, init=False)  # in arrival order
    _by_address: dict[str, int] = attrs.field(factory=dict, init=False)
    _numbers: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.total < 1 or self.per_address < 0:
            raise ValueError("at least one pending handshake in total, and a per-address "
                             "limit of 0 (none) or more")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pending_from(self, address: str) -> int:
        return self._by_address.get(address, 0)

    @property
    def addresses(self) -> int:
        """How many addresses have a pending socket (an address leaves with its last)."""
        return len(self._by_address)

    def arrive(self, address: str) -> Admitted | Refusal:
        """A socket accepted from `address` (an `address_key`)."""
        from_address = self._by_address.get(address, 0)
        if self.per_address and from_address >= self.per_address:
            return Refusal.TOO_MANY_FROM_ADDRESS
        evicted = None
        if len(self._pending) >= self.total:
            evicted = self._pending[next(iter(self._pending))]
            self.release(evicted)
        self._numbers += 1
        ticket = Ticket(self._numbers, address)
        self._pending[ticket.number] = ticket
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return Admitted(ticket, evicted)

    def release(self, ticket: Ticket) -> bool:
        """The socket's handshake is over (upgraded, refused, failed or evicted). True
        the first time; releasing it again changes nothing."""
        if self._pending.pop(ticket.number, None) is None:
            return False
        left = self._by_address[ticket.address] - 1
        if left:
            self._by_address[ticket.address] = left
        else:
            del self._by_address[ticket.address]
        return True
