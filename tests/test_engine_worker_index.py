"""The worker's index of transports, producers and consumers to their routers.

Two routers, each with two transports that produce audio and consume each other's; then
closes in every order (asked for, by cascade, by a transport on its own, by the router).
After each step the index holds exactly the ids the routers' dumps show, every live id is
found, and every closed one is a NotFoundError. No media flows: nothing here connects.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable

import attrs
import pytest
import trio

from trio_sfu.client.synthetic import audio_rtp_parameters
from trio_sfu.engine.api import ConsumerClosed, EngineEvent, TransportClosed
from trio_sfu.engine.worker import Worker, open_worker
from trio_sfu.errors import NotFoundError
from trio_sfu.ortc.types import DtlsParameters


@attrs.define(eq=False)
class Meeting:
    """One router: transports a and b; a produces pa, consumed on b as ca; b produces pb,
    consumed on a as cb."""

    router_id: str
    a: str
    b: str
    pa: str
    pb: str
    ca: str
    cb: str
    events: list[EngineEvent]

    def kinds(self) -> dict[str, str]:
        return {
            self.a: "transport",
            self.b: "transport",
            self.pa: "producer",
            self.pb: "producer",
            self.ca: "consumer",
            self.cb: "consumer",
        }


async def open_meeting(worker: Worker) -> Meeting:
    events: list[EngineEvent] = []
    router_id = await worker.create_router(events.append)
    a = (await worker.create_webrtc_transport(router_id)).transport_id
    b = (await worker.create_webrtc_transport(router_id)).transport_id
    pa = await worker.produce(a, "audio", audio_rtp_parameters(ssrc=1111))
    pb = await worker.produce(b, "audio", audio_rtp_parameters(ssrc=2222))
    caps = worker.rtp_capabilities
    ca = (await worker.consume(b, pa, caps)).consumer_id
    cb = (await worker.consume(a, pb, caps)).consumer_id
    return Meeting(router_id, a, b, pa, pb, ca, cb, events)


def dumped_ids(worker: Worker) -> set[str]:
    """Every live id, from the routers' own tables."""
    ids: set[str] = set()
    for router in worker.dump()["routers"]:
        ids.update(router["transportIds"], router["producerIds"], router["consumerIds"])
    return ids


def indexed_ids(worker: Worker) -> set[str]:
    index = set(worker._index)
    assert index == set().union(*worker._indexed.values())
    assert len(index) == sum(len(ids) for ids in worker._indexed.values())
    assert set(worker._indexed) == {router["id"] for router in worker.dump()["routers"]}
    return index


Lookup = Callable[[Worker, str], Awaitable[object]]

#: Per kind, lookups through the worker's API; the first is also tried on live ids.
LOOKUPS: dict[str, list[Lookup]] = {
    "transport": [
        lambda worker, entity_id: worker.restart_ice(entity_id),
        lambda worker, entity_id: worker.connect_transport(entity_id, CLIENT_DTLS),
        lambda worker, entity_id: worker.produce(
            entity_id, "audio", audio_rtp_parameters(ssrc=3333)
        ),
        lambda worker, entity_id: worker.consume(entity_id, "p", worker.rtp_capabilities),
    ],
    "producer": [
        lambda worker, entity_id: worker.pause_producer(entity_id),
        lambda worker, entity_id: worker.resume_producer(entity_id),
    ],
    "consumer": [
        lambda worker, entity_id: worker.pause_consumer(entity_id),
        lambda worker, entity_id: worker.resume_consumer(entity_id),
        lambda worker, entity_id: worker.set_consumer_preferred_layers(entity_id, 0, None),
    ],
}

CLIENT_DTLS = DtlsParameters(fingerprints=[], role="client")


async def check(worker: Worker, kinds: dict[str, str], expected_live: set[str]) -> None:
    # The index first: it must be exact before any lookup touches it.
    assert dumped_ids(worker) == expected_live
    assert indexed_ids(worker) == expected_live
    for entity_id, kind in kinds.items():
        if entity_id in expected_live:
            await LOOKUPS[kind][0](worker, entity_id)
            assert await worker.get_stats(entity_id)
        else:
            for lookup in LOOKUPS[kind]:
                with pytest.raises(NotFoundError, match=re.escape(f"{kind} '{entity_id}'")):
                    await lookup(worker, entity_id)
            with pytest.raises(NotFoundError):
                await worker.get_stats(entity_id)
    assert indexed_ids(worker) == expected_live


def self_close(worker: Worker, meeting: Meeting, transport_id: str) -> None:
    """The transport closes on its own, as on a DTLS failure or an ICE consent timeout."""
    worker._routers[meeting.router_id].transports[transport_id].transport.close("dtls_failed")


STEPS = ("close_consumer_cb", "close_producer_pa", "close_transport_b", "a_closes_itself")


@pytest.mark.parametrize("order", list(itertools.permutations(STEPS)), ids="-".join)
async def test_closes_in_any_order_keep_the_index_exact(order: tuple[str, ...]) -> None:
    with trio.fail_after(20):
        async with open_worker() as worker:
            one = await open_meeting(worker)
            two = await open_meeting(worker)
            kinds = one.kinds() | two.kinds()
            live = set(kinds)
            await check(worker, kinds, live)
            # What each step closes, its cascade included.
            closes = {
                "close_consumer_cb": {one.cb},
                "close_producer_pa": {one.pa, one.ca},
                "close_transport_b": {one.b, one.pb, one.cb, one.ca},
                "a_closes_itself": {one.a, one.pa, one.cb, one.ca},
            }
            for step in order:
                if step == "close_consumer_cb":
                    await worker.close_consumer(one.cb)
                elif step == "close_producer_pa":
                    await worker.close_producer(one.pa)
                elif step == "close_transport_b":
                    await worker.close_transport(one.b)
                else:
                    self_close(worker, one, one.a)
                live -= closes[step]
                await check(worker, kinds, live)
            assert live == set(two.kinds())
            assert any(isinstance(event, TransportClosed) for event in one.events)
            await worker.close_router(one.router_id)
            await check(worker, kinds, live)
            assert not [e for e in two.events if isinstance(e, TransportClosed | ConsumerClosed)]


async def test_closing_a_router_forgets_all_its_ids() -> None:
    with trio.fail_after(20):
        async with open_worker() as worker:
            one = await open_meeting(worker)
            two = await open_meeting(worker)
            kinds = one.kinds() | two.kinds()
            await worker.close_router(one.router_id)
            await check(worker, kinds, set(two.kinds()))
            await worker.close_router(one.router_id)  # idempotent
            with pytest.raises(NotFoundError):
                await worker.create_webrtc_transport(one.router_id)
            # The other router's entities still work, and new ones are found.
            c = (await worker.create_webrtc_transport(two.router_id)).transport_id
            kinds[c] = "transport"
            await check(worker, kinds, set(two.kinds()) | {c})
        # The worker closed: every router and every id is gone.
        assert worker._index == {}
        assert worker._indexed == {}


async def test_closes_of_unknown_or_closed_ids_do_nothing() -> None:
    with trio.fail_after(20):
        async with open_worker() as worker:
            one = await open_meeting(worker)
            kinds = one.kinds()
            await worker.close_transport(one.a)
            live = {one.b, one.pb}
            for entity_id in (one.a, one.pa, one.ca, one.cb, "nope"):
                await worker.close_transport(entity_id)
                await worker.close_producer(entity_id)
                await worker.close_consumer(entity_id)
            # An id of one kind is no id of another; the entity stays indexed.
            with pytest.raises(NotFoundError, match="producer"):
                await worker.pause_producer(one.b)
            with pytest.raises(NotFoundError, match="consumer"):
                await worker.pause_consumer(one.pb)
            with pytest.raises(NotFoundError, match="transport"):
                await worker.produce(one.pb, "audio", audio_rtp_parameters(ssrc=3333))
            await check(worker, kinds, live)
            # The closed ids were asked for by every method: no entry came back.
            assert indexed_ids(worker) == live


async def test_the_index_does_not_grow() -> None:
    with trio.fail_after(20):
        async with open_worker() as worker:
            one = await open_meeting(worker)
            router = one.router_id
            steady = set(one.kinds())
            for round_ in range(30):
                t = (await worker.create_webrtc_transport(router)).transport_id
                p = await worker.produce(t, "audio", audio_rtp_parameters(ssrc=5000 + round_))
                c = (await worker.consume(one.a, p, worker.rtp_capabilities)).consumer_id
                d = (await worker.consume(t, one.pa, worker.rtp_capabilities)).consumer_id
                assert indexed_ids(worker) == steady | {t, p, c, d}
                # Each round closes its entities another way.
                way = round_ % 3
                if way == 0:
                    await worker.close_transport(t)
                elif way == 1:
                    await worker.close_producer(p)
                    await worker.close_consumer(d)
                    await worker.close_transport(t)
                else:
                    self_close(worker, one, t)
                assert indexed_ids(worker) == steady
                assert dumped_ids(worker) == steady


async def test_producer_and_consumer_close_once_and_their_router_and_worker_forget_them() -> None:
    """close() on the objects themselves (as a bug in a consumer does): idempotent, the
    cascade and the events happen once, and the worker's index follows."""
    with trio.fail_after(20):
        async with open_worker() as worker:
            one = await open_meeting(worker)
            kinds = one.kinds()
            router = worker._routers[one.router_id]
            consumer = router.consumers[one.cb]
            consumer.close("internal_error")
            consumer.close("internal_error")
            consumer.close()
            assert consumer.closed and consumer not in router.producers[one.pb].consumers
            await check(worker, kinds, set(kinds) - {one.cb})
            producer = router.producers[one.pa]
            producer.close()
            producer.close("transport_closed")
            assert producer.closed and router.consumers == {}
            await check(worker, kinds, {one.a, one.b, one.pb})
            closed = [
                (e.consumer_id, e.reason) for e in one.events if isinstance(e, ConsumerClosed)
            ]
            assert closed == [(one.cb, "internal_error"), (one.ca, "producer_closed")]
