"""The benchmarks of the forwarding path (``scripts/bench_fanout.py``).

The fan-out benchmark, from the command down:

* :mod:`~trio_sfu.bench.fanout`: the command, every run of it, the report;
* :mod:`~trio_sfu.bench.run`: one run (server, load generators, one window) and
  :mod:`~trio_sfu.bench.row`, the figures of its row;
* :mod:`~trio_sfu.bench.scenarios`, :mod:`~trio_sfu.bench.options`: what runs, and how;
* :mod:`~trio_sfu.bench.server`, :mod:`~trio_sfu.bench.children`: the processes of a run;
  :mod:`~trio_sfu.bench.loadgen`, the load peers' process, and :mod:`~trio_sfu.bench.media`,
  what they send and measure; :mod:`~trio_sfu.bench.relay`, the reference relay;
* :mod:`~trio_sfu.bench.report`: capacity and targets across runs;
  :mod:`~trio_sfu.bench.render`: docs/performance.md from a report;
* :mod:`~trio_sfu.bench.profile` (py-spy) and :mod:`~trio_sfu.bench.channel` (the worker
  channel's own cost).

The PlainTransport benchmark (``--transport plain``): :mod:`~trio_sfu.bench.plain` and its
generator process, :mod:`~trio_sfu.bench.plain_generator`.
Shared by both: :mod:`~trio_sfu.bench.procfs` (``/proc``), :mod:`~trio_sfu.bench.figures`
and :mod:`~trio_sfu.bench.docs` (whose part of docs/performance.md is whose).
"""
