"""docs/performance.md is written by two benchmarks: the fan-out benchmark writes the file,
and the section between :data:`DOCS_START` and :data:`DOCS_END` is the PlainTransport
benchmark's. Each keeps the other's part as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["DOCS_END", "DOCS_START", "write_fanout_docs", "write_plain_section"]

#: Where the docs' plain-benchmark section starts and ends (the rest of the file belongs
#: to ``bench_fanout.py --write-docs``).
DOCS_START: Final = "<!-- plain-benchmark:start -->"
DOCS_END: Final = "<!-- plain-benchmark:end -->"


def write_fanout_docs(path: Path, text: str) -> None:
    """Write the fan-out benchmark's ``text`` to ``path``, followed by the plain section
    that ``path`` had (if any)."""
    old = path.read_text() if path.exists() else ""
    if DOCS_START in old and DOCS_END in old:
        section = old[old.index(DOCS_START) : old.index(DOCS_END) + len(DOCS_END)]
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def write_plain_section(path: Path, section: str) -> None:
    """Put ``section`` in ``path`` in place of the previous one (or at the end)."""
    text = path.read_text() if path.exists() else ""
    if DOCS_START in text and DOCS_END in text:
        before = text[: text.index(DOCS_START)]
        after = text[text.index(DOCS_END) + len(DOCS_END) :].lstrip("\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
