"""``python -m trio_sfu.bench``: the fan-out benchmark (:mod:`trio_sfu.bench.fanout`)."""

from __future__ import annotations

from trio_sfu.bench.fanout import main

raise SystemExit(main())
