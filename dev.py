#!/usr/bin/env python3
"""Set-up and the everyday commands, needing nothing but Python 3.11+.

    python3 dev.py run      the agent on an embedded nats-server, emulated providers, a demo
    python3 dev.py test     the whole test suite (extra arguments go to pytest)
    python3 dev.py bench    the benchmarks (extra arguments go to `python -m bench`)
    python3 dev.py serve    just the agent: `router-agent run` (extra arguments go to it)
    python3 dev.py docs     regenerate docs/signals.md and docs/schemas/

Each creates .venv on first use and installs the project into it (again whenever
pyproject.toml changes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit("Python 3.11+ is required")
    stamp = VENV / f".installed-{extras}"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        subprocess.check_call([str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    print(f"installing the project with [{extras}] into {VENV}", flush=True)
    subprocess.check_call([str(PY), "-m", "pip", "install", "--quiet", "-e", f".[{extras}]"], cwd=ROOT)
    stamp.touch()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "bench", "serve", "docs"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv("test,bench" if command == "bench" else "test")
    if command == "run":
        args = [str(PY), "-m", "router_agent.demo", *rest]
    elif command == "serve":
        args = [str(PY), "-m", "router_agent", "run", *rest]
    elif command == "test":
        args = [str(PY), "-m", "pytest", *rest]
    elif command == "bench":
        args = [str(PY), "-m", "bench", *rest]
    else:
        args = [str(PY), "-m", "signals.schema", "--docs", "docs/signals.md", "--schemas", "docs/schemas"]
    try:
        status = subprocess.call(args, cwd=ROOT)
    except KeyboardInterrupt:
        return 130
    if command == "test" and status == 5:
        print("dev.py test: no tests were collected; that is a failure", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
