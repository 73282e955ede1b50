"""ICE-lite server and controlling client, driven with numbers for time and bytes for packets.

The client and server are also paired over ``FakeLink``, a tiny discrete-event network in
the manner of h11's test helpers: no mocks, the real objects talk to each other.
"""

from __future__ import annotations

import string
import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import InvalidStateError
from trio_sfu.ice import (
    MAX_VALIDATED_ADDRESSES,
    IceClientState,
    IceControllingClient,
    IceEvent,
    IceLiteServer,
    IceSelectedAddressChanged,
    IceState,
    IceStateChanged,
    candidate_priority,
    host_candidate_priority,
    random_password,
    random_ufrag,
)
from trio_sfu.stun import (
    Class,
    Method,
    StunMessage,
    build_binding_error,
    build_binding_request,
    build_binding_success,
    parse_stun_untrusted,
)

UFRAG = "srvUfrag"
PASSWORD = "serverPassword0123456789"  # 24 ice-chars
A = ("192.0.2.1", 32853)
B = ("198.51.100.7", 50000)
C = ("2001:db8::5", 40000)


def server(**kwargs: float) -> IceLiteServer:
    return IceLiteServer(ufrag=UFRAG, password=PASSWORD, **kwargs)


def check(
    *,
    username: str = f"{UFRAG}:peer",
    password: str = PASSWORD,
    use_candidate: bool = True,
    nomination: int | None = None,
    controlling: int | None = 42,
    controlled: int | None = None,
    transaction_id: bytes | None = None,
) -> bytes:
    """A connectivity check as a browser would send it to the server."""
    data, _ = build_binding_request(
        username=username,
        password=password,
        priority=0x6EFFFFFF,
        ice_controlling_tiebreaker=controlling,
        ice_controlled_tiebreaker=controlled,
        use_candidate=use_candidate,
        nomination=nomination,
        transaction_id=transaction_id,
    )
    return data


def states(events: list[IceEvent]) -> list[IceState]:
    return [e.state for e in events if isinstance(e, IceStateChanged)]


# -- credentials and priorities ----------------------------------------------------------------


def test_random_credentials() -> None:
    ice_chars = set(string.ascii_letters + string.digits + "+/")
    ufrags = {random_ufrag() for _ in range(50)}
    passwords = {random_password() for _ in range(50)}
    assert len(ufrags) == 50 and len(passwords) == 50
    assert all(len(u) >= 4 and set(u) <= ice_chars for u in ufrags)
    assert all(len(p) >= 22 and set(p) <= ice_chars for p in passwords)


def test_candidate_priority_formula() -> None:
    # RFC 8445 5.1.2.1: 2^24 * type + 2^8 * local + (256 - component).
    assert candidate_priority(126, 65535, 1) == 0x7EFFFFFF == 2130706431
    assert candidate_priority(110, 65535, 1) == 0x6EFFFFFF  # a check's peer-reflexive PRIORITY
    assert candidate_priority(0, 0, 256) == 0
    assert candidate_priority(64, 10000, 2) == 64 * 2**24 + 10000 * 2**8 + 254
    for bad in [(127, 0, 1), (-1, 0, 1), (0, 65536, 1), (0, 0, 0), (0, 0, 257)]:
        with pytest.raises(ValueError):
            candidate_priority(*bad)


def test_host_candidates_rank_udp_above_tcp() -> None:
    udp0 = host_candidate_priority("udp", 0)
    assert udp0 == 0x7EFFFFFF
    assert udp0 > host_candidate_priority("udp", 1) > host_candidate_priority("tcp", 0)
    assert host_candidate_priority("udp", 0x7FFF) > host_candidate_priority("tcp", 0)
    assert host_candidate_priority("tcp", 0) == (126 << 24) + (0x7FFF << 8) + 255
    with pytest.raises(ValueError):
        host_candidate_priority("udp", 0x8000)


# -- the server, one request at a time ---------------------------------------------------------


def test_constructor_checks() -> None:
    generated = IceLiteServer()
    assert len(generated.ufrag) >= 4 and len(generated.password) >= 22
    assert generated.state is IceState.NEW and generated.selected_address is None
    assert generated.next_deadline() is None
    with pytest.raises(ValueError):
        IceLiteServer(ufrag="abc")  # shorter than 4
    with pytest.raises(ValueError):
        IceLiteServer(password="short")
    with pytest.raises(ValueError):
        IceLiteServer(ufrag="has:colon")
    with pytest.raises(ValueError):
        IceLiteServer(consent_timeout=50, close_timeout=40)


def test_valid_nominating_request_is_answered_and_connects() -> None:
    ice = server()
    request = check(transaction_id=bytes.fromhex("b7e7a701bc34d686fa87dfae"))
    response = ice.receive_stun_untrusted(request, A, now=0.0)
    assert response is not None
    # Our answer, checked with the server's password, carries the request's transaction id
    # and the address the request came from. For 192.0.2.1:32853 and this transaction id the
    # attribute bytes are RFC 5769 section 2.2's.
    assert response[:4] == bytes.fromhex("0101002c")  # success, 44 bytes of attributes
    assert response[8:20] == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert response[20:32] == bytes.fromhex("00200008 0001a147 e112a643")
    answer = parse_stun_untrusted(
        response, integrity_key=PASSWORD.encode(), require_fingerprint=True
    )
    assert answer.message_class is Class.RESPONSE
    assert answer.attributes["XOR-MAPPED-ADDRESS"] == A
    assert ice.stun_answered == 1 and ice.stun_dropped == 0
    assert ice.is_validated(A) and not ice.is_validated(B)
    assert ice.selected_address == A
    assert ice.state is IceState.CONNECTED and ice.is_connected
    assert ice.drain_events() == [IceSelectedAddressChanged(A), IceStateChanged(IceState.CONNECTED)]
    assert ice.drain_events() == []


def test_unnominated_request_validates_without_connecting() -> None:
    ice = server()
    assert ice.receive_stun_untrusted(check(use_candidate=False), B, now=1.0) is not None
    assert ice.is_validated(B)
    assert ice.selected_address is None
    assert ice.state is IceState.NEW and not ice.is_connected
    assert ice.next_deadline() is None
    assert ice.drain_events() == []


def without_fingerprint(data: bytes) -> bytes:
    stripped = data[:-8]
    return stripped[:2] + struct.pack("!H", len(stripped) - 20) + stripped[4:]


def response_to_ourselves() -> bytes:
    request = parse_stun_untrusted(check())
    return build_binding_success(request, address=A, password=PASSWORD)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(check(username="otherUfrag:peer"), id="wrong-ufrag"),
        pytest.param(check(username=UFRAG), id="no-colon"),
        pytest.param(check(username=f"{UFRAG}:"), id="no-remote-ufrag"),
        pytest.param(check(username=f"{UFRAG}x:peer"), id="ufrag-prefix-only"),
        pytest.param(check(password="wrongPassword0123456789"), id="wrong-password"),
        pytest.param(without_fingerprint(check()), id="no-fingerprint"),
        pytest.param(check(controlling=None, controlled=7), id="peer-also-controlled"),
        pytest.param(response_to_ourselves(), id="a-response"),
        pytest.param(
            StunMessage(
                Method.BINDING, Class.INDICATION, None, {"USERNAME": f"{UFRAG}:peer"}
            ).encode(integrity_key=PASSWORD.encode()),
            id="an-indication",
        ),
        pytest.param(
            StunMessage(Method.BINDING, Class.REQUEST, None, {"USERNAME": f"{UFRAG}:peer"}).encode(
                integrity_key=PASSWORD.encode()
            ),
            id="no-priority",
        ),
        pytest.param(b"\x00\x01\x00\x00" + bytes(16), id="garbage"),
        pytest.param(b"", id="empty"),
    ],
)
def test_invalid_requests_are_dropped_and_counted(data: bytes) -> None:
    ice = server()
    assert ice.receive_stun_untrusted(data, A, now=0.0) is None
    assert ice.stun_dropped == 1 and ice.stun_answered == 0
    assert not ice.is_validated(A)
    assert ice.state is IceState.NEW and ice.selected_address is None
    assert ice.drain_events() == []


def test_the_control_case_of_the_dropped_list_is_accepted() -> None:
    # The builders behind the parametrized drops above make valid requests when unchanged.
    assert server().receive_stun_untrusted(check(), A, now=0.0) is not None
    assert server().receive_stun_untrusted(check(controlling=None), A, now=0.0) is not None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_server_never_raises_on_garbage(data: bytes) -> None:
    ice = server()
    assert ice.receive_stun_untrusted(data, A, now=0.0) is None
    assert ice.stun_dropped == 1


def test_nomination_follows_the_latest_use_candidate() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.receive_stun_untrusted(check(use_candidate=False), B, now=1.0)
    assert ice.selected_address == A and ice.is_validated(B)
    ice.receive_stun_untrusted(check(), B, now=2.0)
    assert ice.selected_address == B
    assert ice.is_validated(A)  # still acceptable as a media source
    ice.receive_stun_untrusted(check(), A, now=3.0)
    assert ice.selected_address == A
    assert ice.drain_events() == [
        IceSelectedAddressChanged(A),
        IceStateChanged(IceState.CONNECTED),
        IceSelectedAddressChanged(B),
        IceSelectedAddressChanged(A),
    ]


def test_forgetting_a_lost_tuple() -> None:
    ice = server(consent_timeout=30.0, close_timeout=40.0)
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.receive_stun_untrusted(check(use_candidate=False), B, now=1.0)
    ice.drain_events()
    # A validated but unselected tuple: no longer a media source, nothing else changes.
    ice.forget(B)
    assert not ice.is_validated(B) and ice.state is IceState.CONNECTED
    # The selected tuple: consent is lost at once; CLOSED follows at the close timeout.
    ice.forget(A)
    assert ice.state is IceState.DISCONNECTED and ice.selected_address == A
    assert ice.next_deadline() == 40.0
    assert ice.poll(40.0) is IceState.CLOSED
    assert states(ice.drain_events()) == [IceState.DISCONNECTED, IceState.CLOSED]


def test_a_new_nomination_recovers_after_the_selected_tuple_is_lost() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.forget(A)
    ice.receive_stun_untrusted(check(), B, now=1.0)
    assert ice.selected_address == B and ice.state is IceState.CONNECTED


def test_renomination_follows_the_highest_nomination_value() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(nomination=1, use_candidate=False), A, now=0.0)
    assert ice.selected_address == A and ice.state is IceState.CONNECTED
    ice.receive_stun_untrusted(check(nomination=2, use_candidate=False), B, now=1.0)
    assert ice.selected_address == B
    # A late copy of the older nomination is answered but does not move media back.
    assert ice.receive_stun_untrusted(check(nomination=1), A, now=1.5) is not None
    assert ice.selected_address == B
    # In renomination mode a bare USE-CANDIDATE does not move it either.
    ice.receive_stun_untrusted(check(), A, now=1.6)
    assert ice.selected_address == B
    ice.receive_stun_untrusted(check(nomination=3), C, now=2.0)
    assert ice.selected_address == C
    assert [e for e in ice.drain_events() if isinstance(e, IceSelectedAddressChanged)] == [
        IceSelectedAddressChanged(A),
        IceSelectedAddressChanged(B),
        IceSelectedAddressChanged(C),
    ]


def test_consent_timeout_disconnects_then_closes_at_exact_deadlines() -> None:
    ice = server(consent_timeout=30.0, close_timeout=40.0)
    ice.receive_stun_untrusted(check(), A, now=100.0)
    ice.drain_events()
    assert ice.next_deadline() == 130.0
    assert ice.poll(129.999) is IceState.CONNECTED
    # A consent check (no USE-CANDIDATE) from the selected address refreshes consent ...
    ice.receive_stun_untrusted(check(use_candidate=False), A, now=110.0)
    assert ice.next_deadline() == 140.0
    # ... one from another address does not.
    ice.receive_stun_untrusted(check(use_candidate=False), B, now=120.0)
    assert ice.next_deadline() == 140.0
    assert ice.poll(139.999) is IceState.CONNECTED
    assert ice.poll(140.0) is IceState.DISCONNECTED
    assert not ice.is_connected
    assert ice.is_validated(A) and ice.selected_address == A
    assert ice.next_deadline() == 150.0
    assert ice.poll(149.999) is IceState.DISCONNECTED
    assert ice.poll(150.0) is IceState.CLOSED
    assert ice.next_deadline() is None
    assert not ice.is_validated(A) and not ice.is_validated(B)
    assert states(ice.drain_events()) == [IceState.DISCONNECTED, IceState.CLOSED]
    # CLOSED is terminal.
    assert ice.receive_stun_untrusted(check(), A, now=151.0) is None
    assert ice.state is IceState.CLOSED and ice.stun_dropped == 1
    with pytest.raises(InvalidStateError):
        ice.restart()


def test_a_late_poll_passes_through_disconnected_to_closed() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.drain_events()
    assert ice.poll(1000.0) is IceState.CLOSED
    assert states(ice.drain_events()) == [IceState.DISCONNECTED, IceState.CLOSED]


@pytest.mark.parametrize(
    ("address", "use_candidate", "selected"),
    [(A, False, A), (B, True, B)],
    ids=["consent-from-selected", "nomination-elsewhere"],
)
def test_valid_request_recovers_from_disconnected(
    address: tuple[str, int], use_candidate: bool, selected: tuple[str, int]
) -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    assert ice.poll(30.0) is IceState.DISCONNECTED
    ice.drain_events()
    ice.receive_stun_untrusted(check(use_candidate=use_candidate), address, now=35.0)
    assert ice.state is IceState.CONNECTED and ice.selected_address == selected
    assert states(ice.drain_events()) == [IceState.CONNECTED]
    assert ice.next_deadline() == 65.0


def test_unnominated_request_from_elsewhere_does_not_recover() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.poll(30.0)
    ice.receive_stun_untrusted(check(use_candidate=False), B, now=35.0)
    assert ice.state is IceState.DISCONNECTED
    assert ice.poll(40.0) is IceState.CLOSED


def test_ice_restart_keeps_the_old_tuple_until_a_new_nomination() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.receive_stun_untrusted(check(use_candidate=False), C, now=0.5)
    ice.drain_events()
    ufrag, password = ice.restart()
    assert (ufrag, password) == (ice.ufrag, ice.password)
    assert ufrag != UFRAG and password != PASSWORD
    assert len(ufrag) >= 4 and len(password) >= 22
    # Media keeps flowing to the old selected tuple; other old validations are forgotten.
    assert ice.selected_address == A and ice.is_validated(A) and ice.is_connected
    assert not ice.is_validated(C)
    # The old credentials are dead.
    assert ice.receive_stun_untrusted(check(), B, now=1.0) is None
    assert ice.selected_address == A and ice.stun_dropped == 1
    # The new ones work; an unnominated check validates B without moving media.
    new = dict(username=f"{ufrag}:peer2", password=password)
    response = ice.receive_stun_untrusted(check(use_candidate=False, **new), B, now=2.0)
    assert response is not None
    parse_stun_untrusted(response, integrity_key=password.encode())
    assert ice.is_validated(B) and ice.selected_address == A
    assert ice.receive_stun_untrusted(check(**new), B, now=3.0) is not None
    assert ice.selected_address == B
    assert ice.drain_events() == [IceSelectedAddressChanged(B)]
    assert ice.next_deadline() == 33.0


def test_ice_restart_with_no_answer_lets_consent_expire() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.restart()
    ice.receive_stun_untrusted(check(use_candidate=False), A, now=20.0)  # old credentials
    assert ice.poll(30.0) is IceState.DISCONNECTED


def test_restart_before_any_nomination_forgets_everything() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(use_candidate=False), A, now=0.0)
    ice.restart()
    assert not ice.is_validated(A) and ice.state is IceState.NEW


def test_renomination_counter_resets_on_restart() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(nomination=5), A, now=0.0)
    ufrag, password = ice.restart()
    ice.receive_stun_untrusted(
        check(username=f"{ufrag}:p", password=password, nomination=1), B, now=1.0
    )
    assert ice.selected_address == B


def test_close_is_idempotent() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    ice.drain_events()
    ice.close()
    ice.close()
    assert ice.state is IceState.CLOSED and not ice.is_validated(A)
    assert ice.drain_events() == [IceStateChanged(IceState.CLOSED)]
    assert ice.poll(1e9) is IceState.CLOSED


def test_validated_table_is_bounded_and_keeps_the_selected_address() -> None:
    ice = server()
    ice.receive_stun_untrusted(check(), A, now=0.0)
    others = [("10.0.0.1", 10000 + i) for i in range(MAX_VALIDATED_ADDRESSES)]
    for i, address in enumerate(others):
        ice.receive_stun_untrusted(check(use_candidate=False), address, now=1.0 + i)
    assert ice.is_validated(A)  # selected: never evicted
    assert not ice.is_validated(others[0])  # the least recently checked one went
    assert all(ice.is_validated(a) for a in others[1:])


# -- the client, alone -------------------------------------------------------------------------


def client(*, rto: float = 0.1, max_attempts: int = 7) -> IceControllingClient:
    return IceControllingClient(
        remote_ufrag=UFRAG,
        remote_password=PASSWORD,
        local_ufrag="cliUfrag",
        local_password="clientPassword0123456789",
        tie_breaker=0x0102030405060708,
        rto=rto,
        max_attempts=max_attempts,
    )


def test_client_check_contents() -> None:
    ice = client()
    assert ice.state is IceClientState.NEW and ice.state == "new"
    assert ice.next_deadline() is None
    data = ice.start_check(now=0.0)
    assert ice.state is IceClientState.CHECKING
    message = parse_stun_untrusted(data, integrity_key=PASSWORD.encode(), require_fingerprint=True)
    assert message.method is Method.BINDING and message.message_class is Class.REQUEST
    assert message.attributes["USERNAME"] == f"{UFRAG}:cliUfrag"
    assert message.attributes["ICE-CONTROLLING"] == 0x0102030405060708
    assert message.attributes["PRIORITY"] == 0x6EFFFFFF
    assert "USE-CANDIDATE" in message.attributes


def test_client_retransmits_with_doubling_rto_then_fails() -> None:
    ice = client(rto=0.1, max_attempts=7)
    first = ice.start_check(now=0.0)
    sends = [0.0]
    assert ice.handle_timeout(0.05) is None  # nothing due yet
    while True:
        deadline = ice.next_deadline()
        assert deadline is not None
        out = ice.handle_timeout(deadline)
        if out is None:
            break
        assert out == first  # same bytes, same transaction id
        sends.append(deadline)
    # RFC 8489 6.2.1: sends at 0, RTO, 3 RTO, 7 RTO, 15 RTO, 31 RTO, 63 RTO, and failure
    # 16 RTO (Rm) after the last one, at 79 RTO.
    assert sends == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert deadline == pytest.approx(7.9)
    assert ice.state is IceClientState.FAILED and ice.state == "failed"
    assert ice.next_deadline() is None
    # It may try again.
    ice.start_check(now=10.0)
    assert ice.state is IceClientState.CHECKING
    assert ice.next_deadline() == pytest.approx(10.1)


def test_client_with_one_attempt_waits_rm_rto() -> None:
    ice = client(rto=0.5, max_attempts=1)
    ice.start_check(now=0.0)
    assert ice.next_deadline() == pytest.approx(8.0)
    assert ice.handle_timeout(8.0) is None
    assert ice.state is IceClientState.FAILED


def answer(request: bytes, *, password: str = PASSWORD, address: tuple[str, int] = B) -> bytes:
    return build_binding_success(parse_stun_untrusted(request), address=address, password=password)


def test_client_accepts_only_authenticated_answers_to_its_own_checks() -> None:
    ice = client()
    request = ice.start_check(now=0.0)
    assert not ice.receive_stun_untrusted(answer(request, password="wrongPassword0123456789"), 0.01)
    stranger, _ = build_binding_request(
        username="x:y",
        password=PASSWORD,
        priority=1,
        ice_controlling_tiebreaker=1,
        use_candidate=False,
    )
    assert not ice.receive_stun_untrusted(answer(stranger), 0.01)  # unknown transaction
    assert not ice.receive_stun_untrusted(b"\x01\x01garbage", 0.01)
    assert not ice.receive_stun_untrusted(request, 0.01)  # a request, not an answer
    assert ice.stun_dropped == 4 and ice.state is IceClientState.CHECKING
    assert ice.receive_stun_untrusted(answer(request), 0.02)
    assert ice.state is IceClientState.CONNECTED
    assert ice.mapped_address == B
    assert ice.rtt == pytest.approx(0.02)
    assert ice.next_deadline() == pytest.approx(5.02)  # the first consent check
    assert not ice.receive_stun_untrusted(answer(request), 0.03)  # a duplicate answer


def test_client_fails_on_an_authenticated_error() -> None:
    ice = client()
    request = ice.start_check(now=0.0)
    unsigned = build_binding_error(parse_stun_untrusted(request), 401, "Unauthenticated")
    assert not ice.receive_stun_untrusted(unsigned, 0.01)
    assert ice.state is IceClientState.CHECKING  # unsigned errors are not believed
    signed = build_binding_error(parse_stun_untrusted(request), 487, "Role Conflict", PASSWORD)
    assert not ice.receive_stun_untrusted(signed, 0.01)
    assert ice.state is IceClientState.FAILED
    assert ice.next_deadline() is None


def test_an_answer_supersedes_older_checks() -> None:
    ice = client()
    ice.start_check(now=0.0)
    second = ice.start_check(now=0.05)
    assert ice.receive_stun_untrusted(answer(second), 0.06)
    assert ice.rtt == pytest.approx(0.01)
    assert ice.next_deadline() == pytest.approx(5.06)  # no retransmission left pending


def test_retransmitted_check_gives_no_rtt() -> None:
    ice = client()
    request = ice.start_check(now=0.0)
    ice.handle_timeout(0.1)
    assert ice.receive_stun_untrusted(answer(request), 0.15)
    assert ice.rtt is None  # Karn: ambiguous which send was answered


def test_client_restart_changes_credentials_and_drops_checks() -> None:
    ice = client()
    request = ice.start_check(now=0.0)
    local = ice.restart("newUfrag", "newServerPassword0123456")
    assert local == (ice.local_ufrag, ice.local_password) and local[0] != "cliUfrag"
    assert ice.next_deadline() is None
    assert not ice.receive_stun_untrusted(answer(request), 0.01)  # abandoned, old key
    data = ice.start_check(now=1.0)
    message = parse_stun_untrusted(data, integrity_key=b"newServerPassword0123456")
    assert message.attributes["USERNAME"] == f"newUfrag:{local[0]}"


# -- client and server over a fake link --------------------------------------------------------


@attrs.define
class FakeLink:
    """Delivers datagrams between one client (at ``client_address``) and one server after
    ``latency`` seconds, runs both objects' timers, and can lose datagrams."""

    client: IceControllingClient
    server: IceLiteServer
    client_address: tuple[str, int] = B
    latency: float = 0.0
    lose_to_server: int = 0  # lose the next N client -> server datagrams
    cut: bool = False  # lose everything
    now: float = 0.0
    in_flight: list[tuple[float, str, bytes]] = attrs.Factory(list)
    delivered_to_server: list[float] = attrs.Factory(list)

    def send_to_server(self, data: bytes) -> None:
        if self.lose_to_server:
            self.lose_to_server -= 1
        elif not self.cut:
            self.in_flight.append((self.now + self.latency, "server", data))

    def run_until(self, end: float) -> None:
        while True:
            times = [t for t, _, _ in self.in_flight]
            deadlines = (self.client.next_deadline(), self.server.next_deadline())
            times += [t for t in deadlines if t is not None]
            if not times or min(times) > end:
                self.now = end
                return
            self.now = now = min(times)
            due = [item for item in self.in_flight if item[0] <= now]
            self.in_flight = [item for item in self.in_flight if item[0] > now]
            for _, destination, data in due:
                if destination == "server":
                    self.delivered_to_server.append(now)
                    response = self.server.receive_stun_untrusted(data, self.client_address, now)
                    if response is not None and not self.cut:
                        self.in_flight.append((now + self.latency, "client", response))
                else:
                    self.client.receive_stun_untrusted(data, now)
            deadline = self.client.next_deadline()
            if deadline is not None and deadline <= now:
                out = self.client.handle_timeout(now)
                if out is not None:
                    self.send_to_server(out)
            deadline = self.server.next_deadline()
            if deadline is not None and deadline <= now:
                self.server.poll(now)


def paired(*, latency: float = 0.0, lose_to_server: int = 0, cut: bool = False) -> FakeLink:
    ice_server = IceLiteServer()
    ice_client = IceControllingClient(
        remote_ufrag=ice_server.ufrag, remote_password=ice_server.password
    )
    return FakeLink(ice_client, ice_server, latency=latency, lose_to_server=lose_to_server, cut=cut)


def test_client_and_server_connect() -> None:
    link = paired(latency=0.02)
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(0.05)
    assert link.client.state is IceClientState.CONNECTED
    assert link.server.state is IceState.CONNECTED
    assert link.server.selected_address == B
    assert link.client.mapped_address == B
    assert link.client.rtt == pytest.approx(0.04)
    assert link.server.stun_answered == 1 and link.server.stun_dropped == 0


def test_connect_through_loss_uses_retransmissions() -> None:
    link = paired(lose_to_server=2)
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(0.2)
    assert link.client.state is IceClientState.CHECKING
    link.run_until(0.35)
    assert link.client.state is IceClientState.CONNECTED
    assert link.delivered_to_server == pytest.approx([0.3])  # the third send, at 3 RTO
    assert link.client.rtt is None


def test_client_fails_when_the_server_never_answers() -> None:
    link = paired(cut=True)
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(10.0)
    assert link.client.state is IceClientState.FAILED
    assert link.server.state is IceState.NEW


def test_consent_keeps_the_pair_alive_and_its_loss_closes_it() -> None:
    link = paired()
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(100.0)
    assert link.server.state is IceState.CONNECTED and link.client.state == "connected"
    # A consent check every 5 s: the initial check plus one at 5, 10, ..., 100.
    assert len(link.delivered_to_server) == 1 + 20
    link.server.drain_events()
    link.cut = True
    link.run_until(200.0)
    # The last check reached the server at t=100: disconnected at 130, closed at 140.
    assert link.server.state is IceState.CLOSED
    assert states(link.server.drain_events()) == [IceState.DISCONNECTED, IceState.CLOSED]
    # The client's consent check at 105 got no answer: failed 79 RTO later.
    assert link.client.state is IceClientState.FAILED


def test_server_state_times_under_a_cut_link() -> None:
    link = paired()
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(12.0)  # checks at 0, 5, 10
    link.cut = True
    link.run_until(39.999)
    assert link.server.state is IceState.CONNECTED
    link.run_until(40.0)
    assert link.server.state is IceState.DISCONNECTED
    link.run_until(49.999)
    assert link.server.state is IceState.DISCONNECTED
    link.run_until(50.0)
    assert link.server.state is IceState.CLOSED


def test_nat_rebinding_moves_the_selected_address() -> None:
    link = paired()
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(1.0)
    assert link.server.selected_address == B
    link.client_address = C  # the client's NAT mapping changed
    link.run_until(6.0)  # the consent check at 5 s comes from C, with USE-CANDIDATE
    assert link.server.selected_address == C
    assert link.client.mapped_address == C
    assert link.server.is_validated(B) and link.server.is_validated(C)


def test_ice_restart_over_the_link() -> None:
    link = paired()
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(1.0)
    ufrag, password = link.server.restart()
    # Until the client learns the new credentials its consent checks are dropped ...
    link.run_until(6.0)
    assert link.server.stun_dropped == 4  # the check at 5 s and its resends at 5.1, 5.3, 5.7
    assert link.server.selected_address == B and link.server.is_connected
    # ... and after it does, the next check nominates again with them.
    link.client.restart(ufrag, password)
    link.client_address = C
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(7.0)
    assert link.server.selected_address == C
    assert link.client.state is IceClientState.CONNECTED
    link.run_until(60.0)
    assert link.server.state is IceState.CONNECTED
    assert link.client.state is IceClientState.CONNECTED


@settings(max_examples=50, deadline=None)
@given(losses=st.integers(0, 6), latency=st.sampled_from([0.0, 0.01, 0.3]))
def test_connects_whenever_one_of_the_attempts_arrives(losses: int, latency: float) -> None:
    link = paired(lose_to_server=losses, latency=latency)
    link.send_to_server(link.client.start_check(link.now))
    link.run_until(8.0)
    assert link.client.state is IceClientState.CONNECTED
    assert link.server.selected_address == B
