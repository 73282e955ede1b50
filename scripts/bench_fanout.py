#!/usr/bin/env python3
"""The fan-out benchmark (issue 7): see :mod:`trio_sfu.bench.fanout`.

.venv/bin/python scripts/bench_fanout.py                       # the full run (~10 min)
.venv/bin/python scripts/bench_fanout.py --quick               # a smoke run (seconds)
.venv/bin/python scripts/bench_fanout.py --profile 200 --write-docs docs/performance.md
.venv/bin/python scripts/bench_fanout.py --transport plain   # PlainTransport (trio_sfu.bench.plain)
"""

from __future__ import annotations

import sys

from trio_sfu.bench.fanout import main

if __name__ == "__main__":
    if "--transport" in sys.argv:  # the PlainTransport benchmark lives in its own module
        from trio_sfu.bench.plain import main as plain_main

        sys.exit(plain_main())
    sys.exit(main())
