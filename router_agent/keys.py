"""API keys: read from the environment or a file, and checked, without ever showing one.

A key is one line of printable ASCII (it becomes an HTTP header). Every problem is a
``KeyProblem`` whose message says what is wrong and never holds the key.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("router_agent")

MAX_KEY_LENGTH = 4096
"""Longest API key accepted (vendors' keys are ~50-200 characters)."""


class KeyProblem(ValueError):
    """A key reference that cannot be used. The message says why and never holds the key."""


def check_key_text(value: str) -> str:
    """The key ``value`` holds: one line of printable ASCII (it becomes an HTTP header),
    surrounding whitespace removed; else ``KeyProblem``."""
    key = value.strip()
    if not key:
        raise KeyProblem("is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise KeyProblem(f"is longer than {MAX_KEY_LENGTH} characters")
    if not (key.isascii() and key.isprintable()):
        raise KeyProblem("must hold one line of printable ASCII (the key), nothing else")
    return key


def read_key_file(path: str | Path) -> str:
    """The key in a regular file of one line; ``KeyProblem`` otherwise. Reads at most a few KB
    and never blocks on a FIFO or device (``/proc/self/fd/0``, ``/dev/stdin``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise KeyProblem(f"cannot be read ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyProblem("is not a regular file")
        data = b""
        while len(data) <= MAX_KEY_LENGTH + 2:
            chunk = os.read(fd, MAX_KEY_LENGTH + 3 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise KeyProblem(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyProblem("must hold one line of printable ASCII (the key), nothing else") from None
    return check_key_text(text)


def read_key(env_name: str | None, file_name: str | None, *, quiet: bool = False) -> str | None:
    """A configured provider's key, or None when there is none or it is unusable (then the
    provider counts as keyless, and is emulated or disabled, rather than failing every call)."""
    try:
        if env_name:
            value = os.environ.get(env_name)
            if value:
                return check_key_text(value)
        if file_name:
            return read_key_file(file_name)
    except KeyProblem as exc:
        if not quiet:
            log.warning("the key in %s %s", f"${env_name}" if env_name else file_name, exc)
    return None
