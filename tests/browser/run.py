"""Run one browser scenario against a real trio-sfu: ``python -m tests.browser.run SCENARIO``.

Meant to run inside a network namespace that has only loopback (Chromium then offers
127.0.0.1 ICE candidates, and nothing leaves the machine); :func:`namespace_command` builds
the ``unshare`` command line, and ``--outside`` runs it through that for you::

    .venv/bin/python -m tests.browser.run vp8 --outside     # prints one JSON object

Inside, it starts the media engine (``create_engine``, as ``trio-sfu serve`` does) and the
signaling server in this process (trio, port 0, dev mode, an admin token, RTC on 127.0.0.1),
then ``node tests/browser/driver.mjs``, which launches ``/usr/bin/chromium`` through
playwright-core, opens the demo page twice and plays the scenario. The driver's JSON result,
plus what the server saw (``serverDump`` after the browsers left), is printed on stdout as
one line. Everything is bounded in time; temporary directories are removed; the driver runs
in a process group of its own, and the PID namespace made by :func:`namespace_command` takes
every process left (Chromium's helpers included) down with it.

Scenarios: ``vp8``, ``h264`` (two pages publish and decode each other), ``mute`` (camera
paused and resumed), ``leave`` (a page closes, then the other leaves; admin API checks),
``join`` (``--runs N`` joins, timing join to first decoded remote frame).
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
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine import create_engine
from trio_sfu.server import serve_sfu
from trio_sfu.signaling.web import WEB_DIR

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver.mjs"
CHROMIUM = "/usr/bin/chromium"
SCENARIOS = ("vp8", "h264", "mute", "leave", "join")
#: Bound on one driver run per scenario (and per join run for ``join``).
DRIVER_TIMEOUT = 150.0


def namespace_command(python: str, scenario: str, *extra: str) -> list[str]:
    """The command that runs this module in fresh network and PID namespaces.

    ``-n``: only a loopback interface (brought up before Python starts). ``-p -f
    --mount-proc``: a PID namespace whose init is this runner, so when it exits the kernel
    kills every process still in there; ``--kill-child``: if ``unshare`` itself is killed
    (a pytest timeout), that init goes too.
    """
    inner = shlex.join([python, "-m", "tests.browser.run", scenario, *extra])
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
        f"ip link set lo up && exec {inner}",
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
) -> dict[str, Any]:
    """Run driver.mjs once; its last stdout line is the result (JSON)."""
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
        "TRIO_SFU_TIMEOUT_MS": str(int(DRIVER_TIMEOUT * runs * 1000)),
    }
    if screenshot:
        env["TRIO_SFU_SCREENSHOT"] = screenshot
    out_path, err_path = tmp / "driver.out", tmp / "driver.err"
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        relative = BROWSER_NICE - os.getpriority(os.PRIO_PROCESS, 0)
        process = await trio.lowlevel.open_process(
            ["nice", "-n", str(relative), "node", str(DRIVER)],
            env=env,
            cwd=str(tmp),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        deprioritize(process.pid)
        try:
            with trio.move_on_after(DRIVER_TIMEOUT * runs + 15) as scope:
                await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
    stdout = out_path.read_text(errors="replace").strip()
    stderr = err_path.read_text(errors="replace")
    last = stdout.splitlines()[-1] if stdout else ""
    try:
        result: dict[str, Any] = json.loads(last)
    except ValueError:
        error = "the driver timed out" if timed_out else "the driver printed no JSON"
        result = {"ok": False, "error": f"{error} (exit {process.returncode})"}
    result["driverExit"] = process.returncode
    if stderr.strip():
        result["driverStderr"] = stderr[-4000:]
    return result


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
            server = await nursery.start(serve_sfu, config, worker)
            try:
                result = await run_driver(
                    scenario, server.http_url, admin_token, tmp, runs, screenshot
                )
                # Give the server a moment to finish cleaning up after the last page.
                with trio.move_on_after(5):
                    while worker.dump()["routers"]:  # noqa: ASYNC110 (no event to wait on)
                        await trio.sleep(0.1)
                result["serverDump"] = worker.dump()
            finally:
                server.shutdown()
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
