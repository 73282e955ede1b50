"""The sans-IO protocol modules never import trio (ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import trio_sfu

SANS_IO_PACKAGES = ("trio_sfu.rtp", "trio_sfu.rtcp", "trio_sfu.ortc")
SANS_IO_MODULES = (
    "trio_sfu.errors",
    "trio_sfu.stun",
    "trio_sfu.ice",
    "trio_sfu.dtls",
    "trio_sfu.srtp",
    # The engine's sans-IO parts: what the router and its packet path decide, numbers
    # and packets in, numbers and packets out.
    "trio_sfu.engine.control",
    "trio_sfu.engine.rtp_listener",
    "trio_sfu.engine.producer",
    "trio_sfu.engine.consumer",
    "trio_sfu.engine.pipe_consumer",
    "trio_sfu.engine.layers",
    "trio_sfu.engine.bandwidth",
    "trio_sfu.engine.speaker",
    "trio_sfu.engine.recovery",
    "trio_sfu.engine.verbs",
    "trio_sfu.engine.egress_batch",
    "trio_sfu.engine.dtls_parameters",
)


def sans_io_modules() -> list[str]:
    names = list(SANS_IO_MODULES)
    for package in SANS_IO_PACKAGES:
        module = __import__(package, fromlist=["__path__"])
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    return names


def test_sans_io_modules_do_not_import_trio() -> None:
    modules = sans_io_modules()
    assert len(modules) > len(SANS_IO_MODULES) + len(SANS_IO_PACKAGES)
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"trio imported by sans-IO modules: {result.stdout}"
    assert trio_sfu.__version__
