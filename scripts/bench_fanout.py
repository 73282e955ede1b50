#!/usr/bin/env python3
"""The fan-out benchmark (issue 7): see :mod:`trio_sfu.bench`.

.venv/bin/python scripts/bench_fanout.py                       # the full run (~10 min)
.venv/bin/python scripts/bench_fanout.py --quick               # a smoke run (seconds)
.venv/bin/python scripts/bench_fanout.py --profile 200 --write-docs docs/performance.md
"""

from __future__ import annotations

import sys

from trio_sfu.bench import main

if __name__ == "__main__":
    sys.exit(main())
