"""What the browser tests need: root and ``unshare`` for a loopback-only network namespace,
Debian's Chromium and Firefox ESR (installed by ``scripts/install_browser`` when missing)
and the web bundle (``scripts/build_web``).

The tests skip, with the reason, only when they cannot make the namespace (not root, no
``unshare``, or the kernel refuses it). A missing browser or a failed build is an error,
never a skip: the scripts install and build what is missing.

``tests/test_browser*.py`` import :func:`browser_scenario` from here (this conftest sits in
``tests/browser/``, beside the runner, so its fixtures do not reach ``tests/`` by
themselves).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.run import namespace_command

ROOT = Path(__file__).resolve().parents[2]
#: Bound on one scenario subprocess (the runner bounds itself well below this).
SCENARIO_TIMEOUT = 240.0


def namespace_problem() -> str | None:
    """Why this machine cannot run the browser tests, or None."""
    if os.geteuid() != 0:
        return "browser tests need root: they run Chromium in a network namespace (unshare -n)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "browser tests need unshare (util-linux) and ip (iproute2) for a network namespace"
    probe = subprocess.run(
        [
            "unshare",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "--",
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare cannot make network/PID namespaces here: {probe.stderr.strip()}"
    return None


def run_script(name: str) -> None:
    script = ROOT / "scripts" / name
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def browser_ready() -> None:
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    run_script("install_browser")
    run_script("build_web")


def summarize_failure(result: dict[str, Any]) -> str:
    """The parts of a failed run worth reading first, webrtc-internals style."""
    keep = ("error", "step", "details", "driverExit", "driverStderr", "pages", "serverDump")
    lines = [json.dumps({k: result[k] for k in keep if k in result}, indent=1)[:12000]]
    lines.append("--- console (last lines)")
    lines.extend(result.get("console", [])[-40:])
    return "\n".join(lines)


def run_scenario(scenario: str, *extra: str) -> dict[str, Any]:
    """Run ``tests.browser.run SCENARIO`` in its namespaces; its JSON result."""
    done = subprocess.run(
        namespace_command(sys.executable, scenario, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"the {scenario} runner printed no JSON (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    if not result.get("ok"):
        pytest.fail(
            f"browser scenario {scenario} failed:\n{summarize_failure(result)}\n"
            f"--- runner stderr (server log, last lines)\n{done.stderr[-6000:]}"
        )
    return result


@pytest.fixture
def browser_scenario(browser_ready: None) -> Callable[..., dict[str, Any]]:
    """``browser_scenario("vp8")``: run that scenario, fail the test with diagnostics if the
    run itself failed, else return its result for the test's assertions."""
    return run_scenario
