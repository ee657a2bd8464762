"""``python -m bench.traced_agent run ...``: ``router-agent`` with tracemalloc on.

For ``python -m bench.profile --memory N`` only: the agent runs unchanged, and on SIGUSR1
writes a tracemalloc snapshot to ``$BENCH_SNAPSHOT_DIR/snapshot-<n>.bin`` (the harness
then compares idle with N requests in flight). tracemalloc slows the agent several
times over; never use this for timing.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import tracemalloc
from pathlib import Path

FRAMES = 8


def main() -> int:
    tracemalloc.start(FRAMES)
    out = Path(os.environ.get("BENCH_SNAPSHOT_DIR", "."))
    counter = itertools.count(1)

    def dump(signum: int, frame: object) -> None:
        path = out / f"snapshot-{next(counter)}.bin"
        tracemalloc.take_snapshot().dump(str(path))
        path.with_suffix(".done").write_text("ok")

    signal.signal(signal.SIGUSR1, dump)
    from router_agent.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
