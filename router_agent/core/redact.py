"""Redaction: take secrets out of text that came from outside before the agent republishes it.

Why: an upstream's error message is passed on to the caller (the reply and the
``llm_response`` stream) because it says what went wrong. Some upstreams echo what they
were sent, and an echoed ``Authorization`` header put a provider key on the bus. Every
upstream-derived text goes through ``redact`` before it becomes an error message.

What is removed, each occurrence replaced by ``[redacted]``:

- every ``known`` secret (the keys the agent holds), as an exact substring, when it is at
  least ``MIN_KNOWN_LENGTH`` characters long (a shorter "key" would erase ordinary words);
- header echoes: the value after ``Authorization``, ``Proxy-Authorization``, ``x-api-key``,
  ``api-key``, ``api_key``, ``x-goog-api-key`` and ``: `` or ``=`` (the name is kept);
- ``Bearer <token>`` (the word is kept);
- key-shaped tokens: ``sk-`` (OpenAI, ``sk-ant-`` Anthropic, ``sk-proj-``), ``AIza``
  (Google), ``xai-``, ``gsk_`` (Groq), ``hf_`` (Hugging Face), ``ghp_``/``gho_``/``ghu_``/
  ``ghs_``/``ghr_``/``github_pat_`` (GitHub), ``AKIA``/``ASIA`` (AWS), each with a tail long
  enough that a model name such as ``xai-grok-2`` is left alone;
- JWT-looking strings (``eyJ<base64url>.<base64url>.<signature>``);
- credentials inside a URL (``scheme://user:password@``);
- any run of at least 32 characters of ``[A-Za-z0-9_-]`` holding both a letter and a
  digit (random keys, hex secrets; also UUIDs and long request ids, an accepted loss).

Ordinary prose (words, numbers, model names, punctuation) comes back unchanged.

Rules of the file: pure (no I/O, nothing imported beyond ``re``); known secrets go first
(a pattern must not eat half of one and leave the rest), then a few patterns, each a
single pass; last, a check that no known secret survived (the marker joined to its
neighbours could in theory re-form a short key: then the whole text is replaced).

Speed: it runs on error paths only, but a flood of upstream errors must not make it
expensive. Python's ``re`` pays per position for a pattern that starts with a look-behind
or a case-insensitive alternation (one such combined pattern cost ~40 us per 200
characters), so every pattern here starts with a literal (``re`` then skips ahead in C),
the header names are matched on the lower-cased text (same offsets for ASCII; other text
takes a case-insensitive pattern), and word boundaries are checked in Python on the few
matches. Measured: ~6-10 us for a 200-character message (``tests/test_redact.py`` prints it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MARK", "MIN_KNOWN_LENGTH", "redact"]

MARK = "[redacted]"
MIN_KNOWN_LENGTH = 8
"""Known secrets shorter than this are not searched for (they would match ordinary text)."""

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

_LABELS_SOURCE = r"""
    # A header echo: the value after the name, separator and scheme word (all three kept).
    (?: authorization | api[-_]?key ) ["']? \s* [:=] \s* ["']?
    (?> (?: (?: bearer | basic | token | bot ) \s+ )? )  # atomic: never re-read as the value
    (?P<value> [^\s"',;}\]\[]+ )
    |
    # Bearer <token>.
    bearer \s+ (?P<token> [a-z0-9._~+/=-]{8,} )
"""
_LABELS = re.compile(_LABELS_SOURCE, re.VERBOSE)
"""Run on the lower-cased text (ASCII), so its literals lead and ``re`` skips ahead fast."""
_LABELS_ANY_CASE = re.compile(_LABELS_SOURCE, re.VERBOSE | re.IGNORECASE)
"""For non-ASCII text, whose lower-cased form may not keep the offsets."""

_PREFIXED = re.compile(
    r"""
      sk-[A-Za-z0-9_-]{16,}
    | AIza[A-Za-z0-9_-]{20,}
    | xai-[A-Za-z0-9]{20,}
    | gsk_[A-Za-z0-9]{20,}
    | hf_[A-Za-z0-9]{20,}
    | gh[pousr]_[A-Za-z0-9]{20,}
    | github_pat_[A-Za-z0-9_]{20,}
    | A[KS]IA[A-Z0-9]{16}
    | eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*
    """,
    re.VERBOSE,
)
"""Vendor key prefixes (and JWTs); a match glued to a preceding letter or digit is left."""

_USERINFO = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_LONG = re.compile(r"[A-Za-z0-9_-]{32,}")
_HAS_DIGIT = re.compile(r"[0-9]")
_HAS_LETTER = re.compile(r"[A-Za-z]")


def _labels(text: str) -> str:
    """Drop the values of header echoes and ``Bearer`` tokens; keep the names."""
    if text.isascii():
        source, pattern = text.lower(), _LABELS
    else:
        source, pattern = text, _LABELS_ANY_CASE
    pieces: list[str] = []
    last = 0
    for match in pattern.finditer(source):
        group = match.lastgroup
        start = match.start()
        if group == "token" and start and source[start - 1] in _ALNUM:
            continue  # "flagbearer": not the Bearer scheme
        value_start, value_end = match.span(group)
        pieces.append(text[last:value_start])
        pieces.append(MARK)
        last = value_end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _prefixed(match: re.Match[str]) -> str:
    start = match.start()
    if start and match.string[start - 1] in _ALNUM:
        return match.group()  # "task-...": a word that happens to contain the prefix
    return MARK


def _long(match: re.Match[str]) -> str:
    run = match.group()
    if _HAS_DIGIT.search(run) and _HAS_LETTER.search(run):
        return MARK
    return run


def redact(text: str, known: Iterable[str | None] = ()) -> str:
    """``text`` without ``known`` secrets and without anything shaped like a secret.

    ``known`` may hold ``None`` and short strings; both are skipped, so callers can pass
    their keys as they have them (``redact(message, secrets.values())``).
    """
    keys = sorted({k for k in known if k and len(k) >= MIN_KNOWN_LENGTH}, key=len, reverse=True)
    for key in keys:
        if key in text:
            text = text.replace(key, MARK)
    text = _labels(text)
    text = _PREFIXED.sub(_prefixed, text)
    if "://" in text:
        text = _USERINFO.sub("://" + MARK + "@", text)
    text = _LONG.sub(_long, text)
    for key in keys:
        if key in text:  # re-formed by a marker and its neighbours: give nothing away
            return MARK
    return text
