"""Run one browser scenario against a real trio-sfu: ``python -m tests.browser.run SCENARIO``.

Meant to run inside a network namespace that has only loopback (Chromium then offers
127.0.0.1 ICE candidates, and nothing leaves the machine); :func:`namespace_command` builds
the ``unshare`` command line, and ``--outside`` runs it through that for you::

    .venv/bin/python -m tests.browser.run vp8 --outside     # prints one JSON object

Inside, it starts the media engine (``create_engine``, as ``trio-sfu serve`` does) and the
signaling server in this process (trio, port 0, dev mode, an admin token, RTC on 127.0.0.1),
then ``node tests/browser/driver.mjs``, which launches ``/usr/bin/chromium`` through
playwright-core (and ``/usr/bin/firefox-esr`` through puppeteer-core over WebDriver BiDi
for the ``firefox-*`` scenarios), opens the demo page twice and plays the scenario. The
driver's JSON result, plus what the server saw (``serverDump`` after the browsers left), is
printed on stdout as one line. Everything is bounded in time; temporary directories are
removed; the driver runs in a process group of its own, and the PID namespace made by
:func:`namespace_command` takes every process left (the browsers' helpers included) down
with it.

Scenarios: ``vp8``, ``h264`` (two pages publish and decode each other), ``mute`` (camera
paused and resumed), ``leave`` (a page closes, then the other leaves; admin API checks),
``join`` (``--runs N`` joins, timing join to first decoded remote frame), ``layers``
(Bob's preferred layers for Alice's video: r0, then r2 again, framesDecoded sampled every
100 ms), ``layers-loss`` (Bob receives through an impairment relay whose downlink loses
15 %: the weak-network policy takes Alice's video to r0, and back up when it heals),
``firefox-vp8`` (Alice in Firefox ESR, Bob in Chromium: as ``vp8``), ``firefox-h264``
(Alice in Chromium publishes H264; Bob's Firefox, which has no H264, is refused her video
as ``unsupported`` and goes on), ``firefox-switch`` (Alice publishes from Firefox; Bob
resumes his consumer and 100 ms later prefers layer 0, three times; framesDecoded sampled
every 50 ms).

In the relayed scenarios (:data:`RELAYED`) every receive transport is announced behind a
:class:`~trio_sfu.testing.impairment.UdpRelay` of its own (:class:`RelayedEngine` wraps the
worker), and the driver controls the relays through its stdin/stdout: a stdout line
``@control {json}`` is a request (:meth:`RelayedEngine.control`), answered with one JSON
line on the driver's stdin.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine import create_engine
from trio_sfu.engine.api import TransportInfo
from trio_sfu.engine.pool import WorkerPool
from trio_sfu.engine.worker import Worker
from trio_sfu.errors import SfuError
from trio_sfu.server import serve_sfu
from trio_sfu.signaling.web import WEB_DIR
from trio_sfu.testing.impairment import Impairment, UdpRelay

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver.mjs"
CHROMIUM = "/usr/bin/chromium"
FIREFOX = "/usr/bin/firefox-esr"
SCENARIOS = (
    "vp8",
    "h264",
    "mute",
    "leave",
    "join",
    "layers",
    "layers-loss",
    "firefox-vp8",
    "firefox-h264",
    "firefox-switch",
)
#: Scenarios with a Firefox page: their namespace gets a default route over ``lo`` with
#: 127.0.0.1 as its source. Firefox offers only its "default address" (the source of a
#: route to the Internet) as a host candidate: without a default route it gathers no UDP
#: candidate at all, and with one but no source address it tries to bind 0.0.0.0 and fails.
FIREFOX_SCENARIOS = frozenset(s for s in SCENARIOS if s.startswith("firefox-"))
#: Scenarios whose receive transports go through impairment relays.
RELAYED = frozenset({"layers-loss"})
#: Bound on one driver run per scenario (and per join run for ``join``).
DRIVER_TIMEOUT = 150.0
#: A driver stdout line starting with this is a request to the runner (JSON after it).
CONTROL_PREFIX = "@control "


def namespace_command(python: str, scenario: str, *extra: str) -> list[str]:
    """The command that runs this module in fresh network and PID namespaces.

    ``-n``: only a loopback interface (brought up before Python starts; with a default
    route over it for the Firefox scenarios, see :data:`FIREFOX_SCENARIOS`). ``-p -f
    --mount-proc``: a PID namespace whose init is this runner, so when it exits the kernel
    kills every process still in there; ``--kill-child``: if ``unshare`` itself is killed
    (a pytest timeout), that init goes too.
    """
    inner = shlex.join([python, "-m", "tests.browser.run", scenario, *extra])
    setup = "ip link set lo up"
    if scenario in FIREFOX_SCENARIOS:
        setup += " && ip route add default dev lo src 127.0.0.1"
    return [
        "unshare",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        "bash",
        "-c",
        f"{setup} && exec {inner}",
    ]


def network_interfaces() -> list[str]:
    """The interfaces of this process's network namespace (from /proc/net/dev)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


#: Nice values of the server (this process) and of the browsers. On this 2-core machine two
#: Chromiums encoding 720p simulcast can starve the server for 100 ms at a time; the server
#: then stamps transport-cc arrival times late, Chromium's delay-based estimator sees a
#: queue that is not on the network and backs off, and r2 never starts. Browsers run on
#: other machines in real life; here the server gets the CPU first.
SERVER_NICE = -10
BROWSER_NICE = 10


def prioritize_server() -> None:
    """Give this process (the server) CPU priority over the browsers it starts.

    With autogroup scheduling (Linux's default for desktops and these VMs) nice values
    only weigh within a session's group, so this process gets a session and a group of its
    own and the group's nice; without autogroup, the plain nice value does it. Best effort:
    without root the values stay as they are.
    """
    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(SERVER_NICE))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, SERVER_NICE)


def deprioritize(pid: int) -> None:
    """The browser side's session group gets BROWSER_NICE (see prioritize_server)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(BROWSER_NICE))


@attrs.define(eq=False)
class RelayedTransport:
    """One receive transport behind its relay; ``scope`` ends the relay."""

    transport_id: str
    peer_id: str | None
    relay: UdpRelay
    scope: trio.CancelScope

    def report(self) -> dict[str, Any]:
        return {
            "transportId": self.transport_id,
            "peerId": self.peer_id,
            "downlink": attrs.asdict(self.relay.downlink),
            "downlinkStats": attrs.asdict(self.relay.downlink_stats),
            "uplinkStats": attrs.asdict(self.relay.uplink_stats),
        }


class RelayedEngine:
    """The worker, with every receive transport announced behind an impairment relay.

    ``create_webrtc_transport`` for a ``recv`` transport (the signaling side passes
    ``{"peerId", "direction"}`` as app data) starts a :class:`UdpRelay` to the transport's
    UDP candidate and answers with the relay's address instead (TCP candidates dropped),
    so the page's every packet to and from that transport crosses the relay; the relay
    starts lossless. Everything else is the worker's. The relays run in ``nursery`` and
    end with the transport or with the nursery.
    """

    def __init__(self, worker: Worker | WorkerPool, nursery: trio.Nursery, seed: int = 1) -> None:
        self._worker = worker
        self._nursery = nursery
        self._seed = seed
        self.relays: dict[str, RelayedTransport] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)

    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        info = await self._worker.create_webrtc_transport(
            router_id, force_tcp=force_tcp, app_data=app_data
        )
        app_data = app_data or {}
        udp = [c for c in info.ice_candidates if c.protocol == "udp"]
        if app_data.get("direction") != "recv" or not udp:
            return info
        relay = UdpRelay(
            (udp[0].ip, udp[0].port),
            downlink=Impairment(loss_model="spread"),
            seed=self._seed + len(self.relays),
        )
        scope = await self._nursery.start(self._run_relay, relay)
        peer_id = app_data.get("peerId")
        self.relays[info.transport_id] = RelayedTransport(
            info.transport_id, peer_id if isinstance(peer_id, str) else None, relay, scope
        )
        return attrs.evolve(info, ice_candidates=relay.rewrite_candidates(info.ice_candidates))

    @staticmethod
    async def _run_relay(
        relay: UdpRelay, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(relay.run)
                task_status.started(scope)

    async def close_transport(self, transport_id: str) -> None:
        await self._worker.close_transport(transport_id)
        relayed = self.relays.get(transport_id)
        if relayed is not None:
            relayed.scope.cancel()

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request of the driver (a JSON object with ``op``).

        ``{"op": "downlink", "peerId": P, "loss": L}``: the relays of P's receive
        transports lose the share L of what the server sends P from now on ("spread" model:
        very nearly L of any few hundred packets); answers which transports changed.
        ``{"op": "relays"}``: every relay's settings and counters.
        """
        op = request.get("op")
        if op == "relays":
            return {"ok": True, "relays": [r.report() for r in self.relays.values()]}
        if op == "downlink":
            loss = request.get("loss")
            if not isinstance(loss, int | float) or not 0 <= loss < 1:
                return {"ok": False, "error": f"bad loss {loss!r}"}
            chosen = [r for r in self.relays.values() if r.peer_id == request.get("peerId")]
            if not chosen:
                return {"ok": False, "error": f"no relay for peer {request.get('peerId')!r}"}
            for relayed in chosen:
                relayed.relay.downlink.loss = float(loss)
            return {"ok": True, "relays": [r.report() for r in chosen]}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _kill_group(pid: int) -> None:
    """SIGKILL the driver's process group (the driver and whatever it left behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def run_driver(
    scenario: str,
    http_url: str,
    admin_token: str,
    tmp: Path,
    runs: int,
    screenshot: str | None = None,
    engine: RelayedEngine | None = None,
) -> dict[str, Any]:
    """Run driver.mjs once; its last stdout line is the result (JSON).

    Stdout lines starting with :data:`CONTROL_PREFIX` are requests for ``engine``
    (:meth:`RelayedEngine.control`), answered on the driver's stdin as they come.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "TRIO_SFU_URL": http_url,
        "TRIO_SFU_ADMIN_TOKEN": admin_token,
        "TRIO_SFU_WEB_DIR": str(WEB_DIR),
        "TRIO_SFU_SCENARIO": scenario,
        "TRIO_SFU_RUNS": str(runs),
        "TRIO_SFU_CHROMIUM": CHROMIUM,
        "TRIO_SFU_FIREFOX": FIREFOX,
        "TRIO_SFU_TIMEOUT_MS": str(int(DRIVER_TIMEOUT * runs * 1000)),
    }
    if screenshot:
        env["TRIO_SFU_SCREENSHOT"] = screenshot
    err_path = tmp / "driver.err"
    lines: list[str] = []
    timed_out = False
    with err_path.open("wb") as err:
        relative = BROWSER_NICE - os.getpriority(os.PRIO_PROCESS, 0)
        process = await trio.lowlevel.open_process(
            ["nice", "-n", str(relative), "node", str(DRIVER)],
            env=env,
            cwd=str(tmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        deprioritize(process.pid)
        try:
            with trio.move_on_after(DRIVER_TIMEOUT * runs + 15) as scope:
                async with trio.open_nursery() as nursery:
                    read_all = trio.Event()
                    nursery.start_soon(_read_driver, process, engine, lines, read_all)
                    await process.wait()
                    # The rest of its stdout (unless something it left holds the pipe).
                    _kill_group(process.pid)
                    with trio.move_on_after(5):
                        await read_all.wait()
                    nursery.cancel_scope.cancel()
            timed_out = scope.cancelled_caught
        finally:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.aclose()
    stderr = err_path.read_text(errors="replace")
    last = lines[-1] if lines else ""
    try:
        result: dict[str, Any] = json.loads(last)
    except ValueError:
        error = "the driver timed out" if timed_out else "the driver printed no JSON"
        result = {"ok": False, "error": f"{error} (exit {process.returncode})"}
    result["driverExit"] = process.returncode
    if stderr.strip():
        result["driverStderr"] = stderr[-4000:]
    return result


async def _read_driver(
    process: trio.Process, engine: RelayedEngine | None, lines: list[str], read_all: trio.Event
) -> None:
    """Collect the driver's stdout lines into ``lines`` until its end (then ``read_all``
    is set); answer its control requests."""
    assert process.stdout is not None and process.stdin is not None
    buffer = bytearray()
    async for chunk in process.stdout:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = buffer[:end].decode(errors="replace").strip()
            del buffer[: end + 1]
            if not line.startswith(CONTROL_PREFIX):
                if line:
                    lines.append(line)
                continue
            try:
                request = json.loads(line[len(CONTROL_PREFIX) :])
                if engine is None:
                    answer = {"ok": False, "error": "no relays in this scenario"}
                elif not isinstance(request, dict):
                    answer = {"ok": False, "error": "a request is a JSON object"}
                else:
                    answer = engine.control(request)
            except ValueError as error:
                answer = {"ok": False, "error": f"bad request: {error}"}
            # The driver may be gone already; its result (or its absence) tells.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.send_all(json.dumps(answer).encode() + b"\n")
    if buffer.strip():
        lines.append(buffer.decode(errors="replace").strip())
    read_all.set()


#: Scenarios whose result carries the server's view of its video consumers over time.
TIMELINED = frozenset({"layers", "layers-loss", "firefox-switch"})
#: Period of that timeline, seconds.
TIMELINE_PERIOD = 0.2


async def router_dumps(engine: Worker | WorkerPool) -> list[dict[str, Any]]:
    """Every router's full dump (transports, producers, consumers), from the engine in
    this process or asked of each worker process."""
    if isinstance(engine, WorkerPool):
        return [router for dump in await engine.dump_workers() for router in dump["routers"]]
    routers: list[dict[str, Any]] = engine.dump()["routers"]
    return routers


async def record_timeline(
    worker: Worker | WorkerPool, timeline: list[dict[str, Any]], *, period: float = TIMELINE_PERIOD
) -> None:
    """Every ``period``: each video consumer's layers, level and counters with its
    transport's bandwidth estimate, and each video producer's streams (bitrate, packets),
    from the engine's public stats (``rtc:getStats`` answers the same), until cancelled."""
    start = trio.current_time()
    while True:
        await trio.sleep(period)
        consumers: list[dict[str, Any]] = []
        producers: list[dict[str, Any]] = []
        for router in await router_dumps(worker):
            for transport in router["transports"]:
                # Entities may close between the dump and a stats call: skip those.
                with contextlib.suppress(SfuError):
                    for producer_id in transport["producerIds"]:
                        streams = await worker.get_stats(producer_id)
                        if streams and streams[0]["kind"] == "video":
                            producers.append(
                                {
                                    "id": producer_id,
                                    "streams": [
                                        [s["rid"], round(s["bitrate"]), s["packetCount"]]
                                        for s in streams
                                    ],
                                }
                            )
                    for consumer_id in transport["consumerIds"]:
                        c = (await worker.get_stats(consumer_id))[0]
                        if c["kind"] != "video":
                            continue
                        t = (await worker.get_stats(transport["id"]))[0]
                        consumers.append(
                            {
                                "id": consumer_id,
                                "current": c["currentLayers"],
                                "target": c["targetLayers"],
                                "preferred": c["preferredLayers"],
                                "level": c["networkLevel"],
                                "sent": c["packetCount"],
                                "rtx": c["packetsRetransmitted"],
                                "fractionLost": c["fractionLost"],
                                "bwe": t.get("availableOutgoingBitrate"),
                            }
                        )
        timeline.append(
            {
                "t": round(trio.current_time() - start, 2),
                "wall": round(time.time(), 3),
                "consumers": consumers,
                "producers": producers,
            }
        )


async def run_scenario(
    scenario: str, runs: int = 1, screenshot: str | None = None
) -> dict[str, Any]:
    """Serve, drive, shut down; the result with the server's view added."""
    admin_token = secrets.token_hex(16)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        listen_ip="127.0.0.1",
        dev=True,
        admin_token=admin_token,
        cleanup_timeout=3.0,
        shutdown_timeout=5.0,
    )
    tmp = Path(tempfile.mkdtemp(prefix="trio-sfu-browser-"))
    try:
        async with create_engine(config) as worker, trio.open_nursery() as nursery:
            engine = RelayedEngine(worker, nursery) if scenario in RELAYED else None
            server = await nursery.start(serve_sfu, config, engine or worker)
            timeline: list[dict[str, Any]] = []
            try:
                async with trio.open_nursery() as recording:
                    if scenario in TIMELINED:
                        recording.start_soon(record_timeline, worker, timeline)
                    result = await run_driver(
                        scenario, server.http_url, admin_token, tmp, runs, screenshot, engine
                    )
                    recording.cancel_scope.cancel()
                if scenario in TIMELINED:
                    result["serverTimeline"] = timeline
                if engine is not None:
                    result["relays"] = [r.report() for r in engine.relays.values()]
                # Give the server a moment to finish cleaning up after the last page.
                with trio.move_on_after(5):
                    while worker.dump()["routers"]:  # noqa: ASYNC110 (no event to wait on)
                        await trio.sleep(0.1)
                result["serverDump"] = {"routers": await router_dumps(worker)}
                result["workers"] = worker.workers_info()
            finally:
                server.shutdown()
                if engine is not None:
                    for relayed in engine.relays.values():
                        relayed.scope.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--runs", type=int, default=1, help="joins to time (scenario join)")
    parser.add_argument("--screenshot", metavar="PNG", help="vp8/h264: Bob's page at the end")
    parser.add_argument("--verbose", action="store_true", help="server logs at INFO on stderr")
    parser.add_argument(
        "--outside",
        action="store_true",
        help="run this scenario through unshare (network + PID namespaces) and print its result",
    )
    args = parser.parse_args(argv)
    if args.outside:
        extra = ["--runs", str(args.runs)] + (["--verbose"] if args.verbose else [])
        if args.screenshot:
            extra += ["--screenshot", os.path.abspath(args.screenshot)]
        command = namespace_command(sys.executable, args.scenario, *extra)
        os.execvp(command[0], command)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    interfaces = network_interfaces()
    if interfaces != ["lo"]:
        print(
            json.dumps(
                {
                    "ok": False,
                    "error": f"not in a loopback-only network namespace (interfaces {interfaces})",
                }
            )
        )
        return 2
    prioritize_server()
    result = trio.run(run_scenario, args.scenario, args.runs, args.screenshot)
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
