"""ICE for an SFU: the ICE-lite server side and a controlling client, sans-IO.

:class:`IceLiteServer` is what a WebRtcTransport runs (RFC 8445 section 2.5, "lite"
implementation): it has host candidates only, never sends checks, is always the controlled
agent, answers the peer's Binding requests and follows the peer's nomination.
:class:`IceControllingClient` is the other end, a full agent in the controlling role with a
single candidate pair, which is all that a client of an ICE-lite server needs (our test
harness, the Python SDK and the load generator use it; so can a client of mediasoup).

Both are pure objects in the h11 manner: bytes and the current time in, bytes out. They
never read a clock (every method that cares takes ``now``, in seconds, from any monotonic
clock), never touch a socket and never import trio. The I/O layer sends what they return,
sleeps until ``next_deadline()`` and then calls ``poll`` / ``handle_timeout``.
"""

from __future__ import annotations

import enum
import secrets
import string
from typing import Final, Literal, final

import attrs

from trio_sfu.errors import BadPacket, InvalidStateError
from trio_sfu.ortc.types import IceCandidate
from trio_sfu.stun import (
    Class,
    Method,
    StunMessage,
    build_binding_request,
    build_binding_success,
    parse_stun_untrusted,
)

__all__ = [
    "HOST_TYPE_PREFERENCE",
    "PEER_REFLEXIVE_TYPE_PREFERENCE",
    "IceClientState",
    "IceControllingClient",
    "IceEvent",
    "IceLiteServer",
    "IceSelectedAddressChanged",
    "IceState",
    "IceStateChanged",
    "candidate_priority",
    "host_candidate_priority",
    "random_password",
    "random_ufrag",
]

Address = tuple[str, int]

# --------------------------------------------------------------------------------------------
# Credentials and priorities
# --------------------------------------------------------------------------------------------

# ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839 section 5.4). We draw from letters and
# digits only, a subset, so the values are also safe in URLs, logs and JSON without escaping.
_ICE_ALPHABET: Final = string.ascii_letters + string.digits
_ICE_CHARS: Final = frozenset(string.ascii_letters + string.digits + "+/")

UFRAG_LENGTH: Final = 16
"""Characters in a generated ufrag (RFC 8445: at least 4, 24 bits of randomness)."""

PASSWORD_LENGTH: Final = 32
"""Characters in a generated password (RFC 8445: at least 22, 128 bits of randomness)."""


def random_ufrag() -> str:
    """A fresh ICE username fragment: 16 random ice-chars from :mod:`secrets` (~95 bits)."""
    return "".join(secrets.choice(_ICE_ALPHABET) for _ in range(UFRAG_LENGTH))


def random_password() -> str:
    """A fresh ICE password: 32 random ice-chars from :mod:`secrets` (~190 bits)."""
    return "".join(secrets.choice(_ICE_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _check_credential(value: str, what: str, minimum: int) -> str:
    if not minimum <= len(value) <= 256 or not _ICE_CHARS.issuperset(value):
        raise ValueError(f"ICE {what} must be {minimum}..256 ice-chars (letters, digits, + /)")
    return value


HOST_TYPE_PREFERENCE: Final = 126
"""RFC 8445 section 5.1.2.2 recommended type preference of host candidates."""

PEER_REFLEXIVE_TYPE_PREFERENCE: Final = 110
"""RFC 8445 section 5.1.2.2 recommended type preference of peer-reflexive candidates: the
PRIORITY a connectivity check carries (section 7.1.1)."""


def candidate_priority(type_pref: int, local_pref: int, component: int = 1) -> int:
    """RFC 8445 section 5.1.2.1: ``2^24 * type_pref + 2^8 * local_pref + (256 - component)``.

    ``type_pref`` is 0..126, ``local_pref`` 0..65535, ``component`` 1..256 (RTP is 1, and
    with rtcp-mux that is the only one).
    """
    if not 0 <= type_pref <= 126:
        raise ValueError(f"type preference {type_pref} is outside 0..126")
    if not 0 <= local_pref <= 0xFFFF:
        raise ValueError(f"local preference {local_pref} is outside 0..65535")
    if not 1 <= component <= 256:
        raise ValueError(f"component {component} is outside 1..256")
    return (type_pref << 24) + (local_pref << 8) + (256 - component)


def host_candidate_priority(protocol: Literal["udp", "tcp"], index: int = 0) -> int:
    """Priority of the server's ``index``-th host candidate of ``protocol``.

    Like mediasoup, a UDP candidate always outranks a TCP (passive) one, so a browser uses
    TCP only when no UDP pair works; among candidates of one protocol, lower ``index``
    (listen order) ranks higher. UDP local preferences are 65535 down to 32768, TCP ones
    32767 down to 0.
    """
    if not 0 <= index < 0x8000:
        raise ValueError(f"candidate index {index} is outside 0..32767")
    base = 0xFFFF if protocol == "udp" else 0x7FFF
    return candidate_priority(HOST_TYPE_PREFERENCE, base - index, 1)


def host_candidates(
    address: str, udp_port: int | None, tcp_port: int | None, *, prefer_udp: bool = True
) -> list[IceCandidate]:
    """The server's host candidates: one on ``udp_port`` and one passive TCP candidate on
    ``tcp_port`` (None: that protocol is off), both on ``address``. UDP outranks TCP
    unless not ``prefer_udp``."""
    candidates: list[IceCandidate] = []
    if prefer_udp:
        udp_priority = host_candidate_priority("udp")
        tcp_priority = host_candidate_priority("tcp")
    else:
        # The same two local preferences, the other way round.
        udp_priority = candidate_priority(HOST_TYPE_PREFERENCE, 0x7FFF)
        tcp_priority = candidate_priority(HOST_TYPE_PREFERENCE, 0xFFFF)
    if udp_port is not None:
        candidates.append(
            IceCandidate(
                foundation="udpcandidate",
                priority=udp_priority,
                address=address,
                ip=address,
                port=udp_port,
                type="host",
                protocol="udp",
            )
        )
    if tcp_port is not None:
        candidates.append(
            IceCandidate(
                foundation="tcpcandidate",
                priority=tcp_priority,
                address=address,
                ip=address,
                port=tcp_port,
                type="host",
                protocol="tcp",
                tcp_type="passive",
            )
        )
    return candidates


# --------------------------------------------------------------------------------------------
# The ICE-lite server
# --------------------------------------------------------------------------------------------


class IceState(enum.StrEnum):
    """The server's ICE state, valued like mediasoup's ``iceState``.

    This implementation uses ``CONNECTED`` for "a nominated pair carries media" and never
    enters ``COMPLETED`` (mediasoup reports ``connected`` for a checked but not yet nominated
    pair and ``completed`` once nominated; here an unnominated pair does not change the
    state). The member exists so that values and names match mediasoup's. Use
    :attr:`IceLiteServer.is_connected` rather than comparing with a single member.
    """

    NEW = "new"
    CONNECTED = "connected"
    COMPLETED = "completed"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@final
@attrs.frozen
class IceStateChanged:
    """The server entered ``state``."""

    state: IceState


@final
@attrs.frozen
class IceSelectedAddressChanged:
    """Media now goes to ``address`` (a new nomination, or renomination)."""

    address: Address


IceEvent = IceStateChanged | IceSelectedAddressChanged


class _Input(enum.Enum):
    SELECTED_PAIR_CHECKED = enum.auto()  # a valid request nominated, or came from, the pair
    CONSENT_EXPIRED = enum.auto()  # consent_timeout without a valid request on the pair
    CLOSE_TIMEOUT = enum.auto()  # close_timeout without one
    CLOSE = enum.auto()  # close() called


_S = IceState
# Every state transition of IceLiteServer, in one place. A pair missing here is a bug.
_TRANSITIONS: Final[dict[tuple[IceState, _Input], IceState]] = {
    (_S.NEW, _Input.SELECTED_PAIR_CHECKED): _S.CONNECTED,
    (_S.CONNECTED, _Input.SELECTED_PAIR_CHECKED): _S.CONNECTED,
    (_S.DISCONNECTED, _Input.SELECTED_PAIR_CHECKED): _S.CONNECTED,
    (_S.CONNECTED, _Input.CONSENT_EXPIRED): _S.DISCONNECTED,
    (_S.DISCONNECTED, _Input.CLOSE_TIMEOUT): _S.CLOSED,
    (_S.NEW, _Input.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _Input.CLOSE): _S.CLOSED,
    (_S.DISCONNECTED, _Input.CLOSE): _S.CLOSED,
    (_S.CLOSED, _Input.CLOSE): _S.CLOSED,
}

MAX_VALIDATED_ADDRESSES: Final = 16
"""Validated addresses kept per server; past this the least recently checked one that is not
selected is forgotten (a client that keeps changing ports cannot grow the table)."""


@final
class IceLiteServer:
    """The SFU side of ICE (lite, always controlled), for one transport.

    Feed it every STUN datagram (or RFC 4571 frame) with :meth:`receive_stun_untrusted` and
    send back what it returns; call :meth:`poll` when :meth:`next_deadline` comes. Accept
    media only from addresses for which :meth:`is_validated` is true, and send media to
    :attr:`selected_address` only while :attr:`is_connected`.

    States (see ``_TRANSITIONS``)::

        NEW --valid nominating request--> CONNECTED
        CONNECTED --no valid request from selected_address for consent_timeout--> DISCONNECTED
        DISCONNECTED --valid request from selected_address, or a new nomination--> CONNECTED
        DISCONNECTED --still none at close_timeout (since the last one)--> CLOSED
        any --close()--> CLOSED (terminal)

    A valid request is a Binding request with USERNAME ``"{ufrag}:{peer ufrag}"``, PRIORITY,
    no ICE-CONTROLLED (we are the controlled agent, so that would be an unresolvable role
    conflict), MESSAGE-INTEGRITY keyed with :attr:`password` and FINGERPRINT. It validates
    its source address and refreshes that address's consent. It nominates that address when
    it carries USE-CANDIDATE, or, once the peer uses renomination (Chromium's NOMINATION
    attribute), when its NOMINATION value is higher than any seen before: the selected
    address follows the newest nomination.

    State changes: :attr:`state` and :attr:`selected_address` are plain attributes that
    only :meth:`receive_stun_untrusted`, :meth:`poll`, :meth:`restart` and :meth:`close`
    change; each change is also queued as an :class:`IceStateChanged` or
    :class:`IceSelectedAddressChanged` event, which :meth:`drain_events` hands over in order.
    """

    __slots__ = (
        "_consent",
        "_events",
        "_key",
        "_nomination",
        "_username_prefix",
        "close_timeout",
        "consent_timeout",
        "password",
        "selected_address",
        "state",
        "stun_answered",
        "stun_dropped",
        "ufrag",
    )

    def __init__(
        self,
        *,
        consent_timeout: float = 30.0,
        close_timeout: float = 40.0,
        ufrag: str | None = None,
        password: str | None = None,
    ) -> None:
        if not 0 < consent_timeout <= close_timeout:
            raise ValueError("need 0 < consent_timeout <= close_timeout")
        self.consent_timeout = consent_timeout
        self.close_timeout = close_timeout
        self.ufrag = ""
        self.password = ""
        self._key = b""
        self._username_prefix = ""
        self._set_credentials(
            random_ufrag() if ufrag is None else _check_credential(ufrag, "ufrag", 4),
            random_password() if password is None else _check_credential(password, "pwd", 22),
        )
        self.state = IceState.NEW
        self.selected_address: Address | None = None
        # Validated addresses -> time of their latest valid request (consent freshness).
        self._consent: dict[Address, float] = {}
        # Highest NOMINATION value seen (0: the peer does not use renomination).
        self._nomination = 0
        self._events: list[IceEvent] = []
        self.stun_dropped = 0
        self.stun_answered = 0

    def _set_credentials(self, ufrag: str, password: str) -> None:
        self.ufrag = ufrag
        self.password = password
        self._key = password.encode()
        self._username_prefix = ufrag + ":"

    @property
    def is_connected(self) -> bool:
        """True while media may be sent to :attr:`selected_address` (consent is fresh)."""
        return self.state is IceState.CONNECTED or self.state is IceState.COMPLETED

    def is_validated(self, address: Address) -> bool:
        """Whether media from ``address`` is acceptable (it passed a connectivity check in
        this ICE session, or is the selected address kept across an ICE restart). A dict
        lookup: cheap enough for every incoming media datagram."""
        return address in self._consent

    def forget(self, address: Address) -> None:
        """The tuple ``address`` is gone (its ICE-TCP connection closed).

        It is no longer validated. If it was the selected tuple, consent is lost at once:
        CONNECTED goes DISCONNECTED, and CLOSED follows at the usual close timeout unless
        the peer nominates another tuple first.
        """
        if address != self.selected_address:
            self._consent.pop(address, None)
        elif self.state is IceState.CONNECTED:
            self._fire(_Input.CONSENT_EXPIRED)

    def drain_events(self) -> list[IceEvent]:
        """The state and selected-address changes since the last call, oldest first."""
        events = self._events
        self._events = []
        return events

    def receive_stun_untrusted(self, data: bytes, address: Address, now: float) -> bytes | None:
        """Handle one STUN message that came from ``address``.

        Returns the success response to send back to ``address`` for a valid Binding
        request, else None: anything else (bad or missing integrity or fingerprint, wrong
        ufrag, a response or indication, garbage, or any message once CLOSED) is counted in
        :attr:`stun_dropped` and otherwise ignored. Never raises for bad input.
        """
        if self.state is IceState.CLOSED:
            self.stun_dropped += 1
            return None
        try:
            request = parse_stun_untrusted(data, integrity_key=self._key, require_fingerprint=True)
        except BadPacket:
            self.stun_dropped += 1
            return None
        if not self._acceptable(request):
            self.stun_dropped += 1
            return None

        self._remember(address, now)
        if self._nominates(request) and address != self.selected_address:
            self.selected_address = address
            self._events.append(IceSelectedAddressChanged(address))
        if address == self.selected_address:
            self._fire(_Input.SELECTED_PAIR_CHECKED)
        self.stun_answered += 1
        return build_binding_success(request, address=address, password=self._key)

    def _acceptable(self, request: StunMessage) -> bool:
        if request.method is not Method.BINDING or request.message_class is not Class.REQUEST:
            return False
        attributes = request.attributes
        username = attributes.get("USERNAME")
        prefix = self._username_prefix
        return (
            isinstance(username, str)
            and username.startswith(prefix)
            and len(username) > len(prefix)
            and "PRIORITY" in attributes
            and "ICE-CONTROLLED" not in attributes
        )

    def _nominates(self, request: StunMessage) -> bool:
        nomination = request.nomination
        if nomination is not None:
            if nomination > self._nomination:
                self._nomination = nomination
                return True
            return False  # an older (reordered or retransmitted) nomination
        if "USE-CANDIDATE" not in request.attributes:
            return False
        # In renomination mode only NOMINATION values move the selection; a plain
        # USE-CANDIDATE still makes a first selection.
        return self._nomination == 0 or self.selected_address is None

    def _remember(self, address: Address, now: float) -> None:
        consent = self._consent
        if address not in consent and len(consent) >= MAX_VALIDATED_ADDRESSES:
            candidates = [a for a in consent if a != self.selected_address]
            del consent[min(candidates, key=consent.__getitem__)]
        consent[address] = now

    def _fire(self, event: _Input) -> None:
        new = _TRANSITIONS[self.state, event]
        if new is not self.state:
            self.state = new
            self._events.append(IceStateChanged(new))
            if new is IceState.CLOSED:
                self._consent.clear()

    def next_deadline(self) -> float | None:
        """When :meth:`poll` should next be called; None while no timer runs (NEW, CLOSED)."""
        if self.selected_address is None:
            return None
        if self.state is IceState.CONNECTED:
            return self._consent[self.selected_address] + self.consent_timeout
        if self.state is IceState.DISCONNECTED:
            return self._consent[self.selected_address] + self.close_timeout
        return None

    def poll(self, now: float) -> IceState:
        """Apply the consent timers at time ``now`` and return the (possibly new) state.

        Consent is measured from the latest valid request from :attr:`selected_address`:
        DISCONNECTED at ``+ consent_timeout``, CLOSED at ``+ close_timeout``. A late call
        may pass through both.
        """
        if self.selected_address is not None and self.state is not IceState.CLOSED:
            last = self._consent[self.selected_address]
            if self.state is IceState.CONNECTED and now >= last + self.consent_timeout:
                self._fire(_Input.CONSENT_EXPIRED)
            if self.state is IceState.DISCONNECTED and now >= last + self.close_timeout:
                self._fire(_Input.CLOSE_TIMEOUT)
        return self.state

    def restart(self) -> tuple[str, str]:
        """ICE restart: draw a new ufrag and password and return them.

        Requests with the old credentials are dropped from now on. The selected address
        stays validated and selected, so media keeps flowing, until a request with the new
        credentials nominates a tuple; other validated addresses are forgotten. The state and
        consent timers carry on (the peer must come back with the new credentials within the
        consent timeout). Raises :class:`InvalidStateError` once CLOSED.
        """
        if self.state is IceState.CLOSED:
            raise InvalidStateError("ICE is closed")
        self._set_credentials(random_ufrag(), random_password())
        self._nomination = 0
        selected = self.selected_address
        if selected is None:
            self._consent.clear()
        else:
            self._consent = {selected: self._consent[selected]}
        return self.ufrag, self.password

    def close(self) -> None:
        """Enter CLOSED (terminal); idempotent. Nothing is validated any more."""
        self._fire(_Input.CLOSE)


# --------------------------------------------------------------------------------------------
# The controlling client
# --------------------------------------------------------------------------------------------


class IceClientState(enum.StrEnum):
    """The client's view of its one candidate pair (values as in RTCIceTransportState)."""

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"


RM: Final = 16
"""RFC 8489 section 6.2.1: after the last retransmission, wait RM x RTO before giving up."""


@final
class _Transaction:
    __slots__ = ("attempts", "deadline", "interval", "request", "started")

    def __init__(self, request: bytes, now: float, rto: float) -> None:
        self.request = request
        self.started = now
        self.attempts = 1  # sends so far
        self.interval = rto  # time from the latest send to the next one
        self.deadline = now + rto


@final
class IceControllingClient:
    """A controlling ICE agent with one candidate pair, for talking to an ICE-lite server.

    :meth:`start_check` returns the first connectivity check (USE-CANDIDATE, so the check
    also nominates). Send it, feed every STUN message from the server to
    :meth:`receive_stun_untrusted`, and call :meth:`handle_timeout` at
    :meth:`next_deadline` (again while ``next_deadline() <= now``: one call returns at most
    one datagram).

    Retransmission follows RFC 8489 section 6.2.1: the request is sent at 0, RTO, 3 RTO,
    7 RTO, ... (the interval doubles) up to ``max_attempts`` sends; ``RM * rto`` after the
    last one without an authenticated answer the transaction fails and so does the client
    (state FAILED; :meth:`start_check` may try again). Once CONNECTED, a consent check
    (RFC 7675, also with USE-CANDIDATE, so that the server follows a NAT rebinding) goes out
    every ``consent_interval`` seconds; its failure also means FAILED. A success answer
    supersedes every older transaction. Only responses whose MESSAGE-INTEGRITY matches the
    remote password count; an authenticated error response fails the client at once.
    """

    __slots__ = (
        "_next_consent",
        "_remote_key",
        "_transactions",
        "consent_interval",
        "local_password",
        "local_ufrag",
        "mapped_address",
        "max_attempts",
        "remote_password",
        "remote_ufrag",
        "rto",
        "rtt",
        "state",
        "stun_dropped",
        "tie_breaker",
    )

    def __init__(
        self,
        *,
        remote_ufrag: str,
        remote_password: str,
        local_ufrag: str | None = None,
        local_password: str | None = None,
        tie_breaker: int | None = None,
        consent_interval: float = 5.0,
        rto: float = 0.1,
        max_attempts: int = 7,
    ) -> None:
        if rto <= 0 or consent_interval <= 0 or max_attempts < 1:
            raise ValueError("need rto > 0, consent_interval > 0 and max_attempts >= 1")
        self.remote_ufrag = remote_ufrag
        self.remote_password = remote_password
        self._remote_key = remote_password.encode()
        self.local_ufrag = random_ufrag() if local_ufrag is None else local_ufrag
        self.local_password = random_password() if local_password is None else local_password
        self.tie_breaker = secrets.randbits(64) if tie_breaker is None else tie_breaker
        self.consent_interval = consent_interval
        self.rto = rto
        self.max_attempts = max_attempts
        self.state = IceClientState.NEW
        self.mapped_address: Address | None = None
        """XOR-MAPPED-ADDRESS of the latest success: our address as the server sees it."""
        self.rtt: float | None = None
        """Round-trip time of the latest success answered before any retransmission."""
        self.stun_dropped = 0
        # Outstanding transactions by id, oldest first.
        self._transactions: dict[bytes, _Transaction] = {}
        self._next_consent: float | None = None

    def _request(self) -> tuple[bytes, bytes]:
        return build_binding_request(
            username=f"{self.remote_ufrag}:{self.local_ufrag}",
            password=self._remote_key,
            priority=candidate_priority(PEER_REFLEXIVE_TYPE_PREFERENCE, 0xFFFF, 1),
            ice_controlling_tiebreaker=self.tie_breaker,
            use_candidate=True,
        )

    def _begin(self, now: float) -> bytes:
        data, transaction_id = self._request()
        transaction = _Transaction(data, now, self.rto)
        transaction.deadline = now + self._wait(transaction)
        self._transactions[transaction_id] = transaction
        return data

    def _wait(self, transaction: _Transaction) -> float:
        """How long after a send of ``transaction`` its timer fires."""
        if transaction.attempts < self.max_attempts:
            return transaction.interval
        return RM * self.rto

    def start_check(self, now: float) -> bytes:
        """A new nominating connectivity check to send now (NEW/FAILED -> CHECKING)."""
        if self.state is not IceClientState.CONNECTED:
            self.state = IceClientState.CHECKING
        return self._begin(now)

    def receive_stun_untrusted(self, data: bytes, now: float) -> bool:
        """Handle one STUN message from the server; True when it is the authenticated success
        response of an outstanding check (the client is then CONNECTED). Never raises for bad
        input; what is not an answer to us is counted in :attr:`stun_dropped`."""
        try:
            message = parse_stun_untrusted(data, integrity_key=self._remote_key)
        except BadPacket:
            self.stun_dropped += 1
            return False
        transaction = self._transactions.get(message.transaction_id)
        if (
            transaction is None
            or message.method is not Method.BINDING
            or message.message_class not in (Class.RESPONSE, Class.ERROR)
        ):
            self.stun_dropped += 1
            return False
        if message.message_class is Class.ERROR:
            self._fail()
            return False
        # This answer supersedes every transaction started before it.
        for transaction_id in list(self._transactions):
            del self._transactions[transaction_id]
            if transaction_id == message.transaction_id:
                break
        if transaction.attempts == 1:
            self.rtt = now - transaction.started
        mapped = message.attributes.get("XOR-MAPPED-ADDRESS")
        if mapped is not None:
            self.mapped_address = mapped
        if self.state is not IceClientState.CONNECTED:
            self.state = IceClientState.CONNECTED
            self._next_consent = now + self.consent_interval
        return True

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` should next be called; None when nothing is pending."""
        deadlines = [t.deadline for t in self._transactions.values()]
        if self._next_consent is not None:
            deadlines.append(self._next_consent)
        return min(deadlines, default=None)

    def handle_timeout(self, now: float) -> bytes | None:
        """Run the timer that is due at ``now``: a retransmission or a consent check to send,
        or a transaction that fails (-> FAILED, returns None). None if nothing was due."""
        due = min(self._transactions.values(), key=lambda t: t.deadline, default=None)
        if due is not None and due.deadline <= now:
            if due.attempts >= self.max_attempts:
                self._fail()
                return None
            due.attempts += 1
            due.interval *= 2
            due.deadline = now + self._wait(due)
            return due.request
        if self._next_consent is not None and self._next_consent <= now:
            self._next_consent = now + self.consent_interval
            return self._begin(now)
        return None

    def _fail(self) -> None:
        self.state = IceClientState.FAILED
        self._transactions.clear()
        self._next_consent = None

    def restart(self, remote_ufrag: str, remote_password: str) -> tuple[str, str]:
        """ICE restart with the server's new credentials; draws new local ones and returns
        them. Outstanding transactions are abandoned; the state stays (media keeps using the
        pair). Call :meth:`start_check` to nominate with the new credentials."""
        self.remote_ufrag = remote_ufrag
        self.remote_password = remote_password
        self._remote_key = remote_password.encode()
        self.local_ufrag = random_ufrag()
        self.local_password = random_password()
        self._transactions.clear()
        return self.local_ufrag, self.local_password
