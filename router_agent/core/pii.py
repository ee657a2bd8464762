"""PII detection: which kinds of personal data or secrets a request's texts contain.

Routing runs it on every request (switchable per agent); a hit keeps the request on local
models and the ``routing_decision`` names the kinds. ``detect`` returns kinds, never
values: nothing found leaves this module, so nothing found can be logged or published.

What counts (candidates are validated, not only matched):

- ``email``: ``local@domain.tld``; not a URL's ``scheme://user@`` nor scp's ``git@host:path``.
- ``phone``: ``+`` and 9-15 digits (E.164); North American ``(415) 555-2671`` (area code and
  exchange 2-9); trunk-0 national ``020 7946 0958``, ``01 23 45 67 89`` (10-11 digits, one
  separator throughout). A bare run of digits is an id, a timestamp or a price, not a phone.
- ``payment_card``: 13-19 digits, bare or in groups of 3-6 split by a space or dash, with a
  network's prefix and length (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay, Mir)
  and a valid Luhn digit. ``iban``: upper case, the country's length, mod-97 == 1.
- ``national_id``: US SSN ``123-45-6789`` (not area 000/666/9xx, group 00, serial 0000) or
  ITIN (area 9, groups 50-65/70-88/90-92/94-99) with one dash or space throughout, or nine
  bare digits after "SSN"/"social security"; UK NINO ``AB 12 34 56 C``; Canadian SIN (Luhn).
- ``ip_address``: a *global* IPv4 (four parts) or IPv6 host. Private, loopback, link-local,
  documentation, reserved (netmasks), multicast addresses and networks (``/24``) fill ordinary
  code and are nobody's; ``7.1.4.34`` (three single digits first) is a version or a section.
- ``secret``: vendor key prefixes (``sk-``, ``sk_live_``, ``AKIA``, ``AIza``, ``ghp_``,
  ``github_pat_``, ``xoxb-``, ``hf_``, ``gsk_``, ``glpat-``, ...) with a digit in the key,
  JWTs, PEM private keys, passwords in URLs, and random-looking tokens (``_random_looking``):
  base64 blobs and opaque random ids count too, as nothing tells them from key material.

Theory of operation. ``re`` pays ~6 ns a character for a pattern that starts with a class, so
a dozen would cost ~70 us/KB. Each text is instead copied once to ASCII bytes (non-ASCII
becomes ``?``, offsets kept) and translated into two *shapes* (a digit becomes ``9``, a
capital ``A``, a key character ``t``), C loops at ~1 ns a byte. Candidates are literals in a
shape (``9`` opening a run of digits and separators, ``AA99`` an IBAN, twenty ``t`` in a row)
that C skips to; patterns, checksums and ``ipaddress`` run on those spans only, and a kind
found is not looked for again. Pure: stdlib only, no I/O.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable
from typing import Literal

__all__ = ["KINDS", "PiiKind", "detect"]

PiiKind = Literal["email", "phone", "payment_card", "iban", "national_id", "ip_address", "secret"]
KINDS: tuple[PiiKind, ...] = ("email", "phone", "payment_card", "iban", "national_id", "ip_address", "secret")

# ------------------------------------------------------------------ shapes and boundaries

_DIGITS, _UPPER, _LOWER = b"0123456789", bytes(range(65, 91)), bytes(range(97, 123))


def _table(default: bytes, classes: dict[bytes, bytes]) -> bytes:
    return bytes(next((m[0] for m, members in classes.items() if b in members), default[0]) for b in range(256))


_SHAPE = _table(b"~", {b"9": _DIGITS, b"A": _UPPER, b"a": _LOWER, b"_": b" -()", b".": b"."})
"""Digit ``9``, capital ``A``, small letter ``a``, dot ``.``, other separators ``_``, else ``~``."""
_NUMBER_RUN = re.compile(rb"9(?<!99)(?<!9[_.]9)(?!999_99_99(?![9_.]))[9_.]{6,}9")
"""On the shape: a whole run of 8+ digits and separators that is not an ISO date."""
_TOKEN_SHAPE = _table(b" ", {b"t": _DIGITS + _UPPER + _LOWER + b"_+/-"})
_TOKEN_RUN = b"t" * 20  # the shortest prefixed key (AKIA + 16) is 20 characters
_WORDISH = frozenset(_DIGITS + _UPPER + _LOWER + b"_")
_NOT_DIGITS, _HAS_DIGIT = re.compile(rb"[^0-9]"), re.compile(rb"[0-9]")


def _glued_left(text: bytes, i: int) -> bool:  # "x4111…", "3.14…"
    return i > 0 and (text[i - 1] in _WORDISH or text[i - 1] == 0x2E)


def _glued_right(text: bytes, j: int) -> bool:  # "…1111x", "…1111.5", "…6789-12"
    return j < len(text) and (text[j] in _WORDISH or text[j] in b".-" and text[j + 1:j + 2].isdigit())


def _bounded(text: bytes, start: int, end: int) -> bool:  # not part of a longer word or number
    return not _glued_left(text, start) and not _glued_right(text, end)


def _luhn(digits: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        total += (d * 2 - 9 if d > 4 else d * 2) if i & 1 else d
    return total % 10 == 0


_LONG, _DINERS = tuple(range(16, 20)), tuple(range(14, 20))
_NETWORKS = (  # (first, last) IIN prefix and lengths: Visa, Amex, Mastercard, Mir, JCB, UnionPay,
    (4, 4, (13, 16, 19)), (34, 34, (15,)), (37, 37, (15,)), (51, 55, (16,)), (2221, 2720, (16,)),
    (2200, 2204, _LONG), (3528, 3589, _LONG), (62, 62, _LONG), (65, 65, _LONG), (644, 649, _LONG),
    (6011, 6011, _LONG), (36, 36, _DINERS), (38, 39, _DINERS), (300, 305, _DINERS), (3095, 3095, _DINERS),
)  # ... Discover, Diners


def _card_network(d: bytes) -> bool:
    """A network's prefix with one of its lengths: a random id is rarely both."""
    return any(first <= int(d[:len(str(first))]) <= last and len(d) in lengths for first, last, lengths in _NETWORKS)


_IBAN_REGISTRY = (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 "
    "DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 "
    "IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 "
    "MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 "
    "SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30"
)
IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in _IBAN_REGISTRY.split()}
"""Country code to IBAN length (SWIFT's IBAN registry)."""
_LETTER_VALUES = {65 + i: str(10 + i) for i in range(26)}  # for the mod-97 check: A=10 ... Z=35


def _ssn_ok(area: bytes, group: bytes, serial: bytes) -> bool:
    if area in (b"000", b"666") or group == b"00" or serial == b"0000":
        return False
    g = int(group)  # 9xx is never an SSN, but may be an ITIN
    return area[0] != 0x39 or 50 <= g <= 65 or 70 <= g <= 88 or 90 <= g <= 92 or 94 <= g <= 99


# ------------------------------------------------------------------ runs of digits

_CARD_SEGMENT, _CARD_SEPARATOR = re.compile(rb"[0-9]+(?:[ -][0-9]+)*"), re.compile(rb"[ -]")
_SSN = re.compile(rb"([0-9]{3})([ -])([0-9]{2})\2([0-9]{4})")
_SSN_AFTER_WORD = re.compile(rb"(?i: ?(?:number|num|no\.?))?(?i: (?:is|was))?[^0-9A-Za-z]{0,4}([0-9]{9})(?![0-9])")
_SIN = re.compile(rb"[0-9]{3}([ -])[0-9]{3}\1[0-9]{3}")
_INTERNATIONAL = re.compile(rb"\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}")
_NANP = re.compile(rb"(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}")
_TRUNK = re.compile(rb"0[1-9][0-9]{0,4}([ .-])[0-9]{2,8}(?:\1[0-9]{2,4}){0,3}")
_PHONES = ((_INTERNATIONAL, 9, 15), (_NANP, 10, 10), (_TRUNK, 10, 11))
_IBAN_GROUP = re.compile(rb"[A-Z0-9]{4} ")
_PRIVATE = (b"10.", b"127.", b"192.168.", b"0.")
_IPV4 = re.compile(  # not the usual private and special ranges: no ipaddress call for those
    rb"(?<![0-9.])(?!(?:0|10|127|192\.168|172\.(?:1[6-9]|2[0-9]|3[01])|169\.254|22[4-9]|2[3-5][0-9])\.)"
    rb"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9])"
)


def _card_in(text: bytes, lo: int, hi: int) -> bool:
    """13-19 digits: one bare group, or groups of 3-6 (the last may be shorter), whole groups."""
    for segment in _CARD_SEGMENT.finditer(text, lo, hi):
        groups = _CARD_SEPARATOR.split(segment.group())
        for i in range(1 if _glued_left(text, segment.start()) else 0, len(groups)):
            digits = b""
            for j in range(i, len(groups)):
                if len(digits) + len(groups[j]) > 19 or j > i and not (
                        3 <= len(groups[j - 1]) <= 6 and len(groups[j]) <= 6):
                    break
                digits += groups[j]
                if (len(digits) >= 13 and _card_network(digits) and _luhn(digits)
                        and (j < len(groups) - 1 or not _glued_right(text, segment.end()))):
                    return True
    return False


def _national_number_in(text: bytes, lo: int, hi: int) -> bool:
    for m in _SSN.finditer(text, lo, hi):
        if _bounded(text, m.start(), m.end()) and _ssn_ok(m[1], m[3], m[4]):
            return True
    for m in _SIN.finditer(text, lo, hi):
        digits = _NOT_DIGITS.sub(b"", m.group())
        if _bounded(text, m.start(), m.end()) and digits[0] not in b"08" and _luhn(digits):
            return True
    return False


def _phone_in(text: bytes, lo: int, hi: int) -> bool:
    for pattern, fewest, most in _PHONES if text[lo] == 0x2B else _PHONES[1:]:
        for m in pattern.finditer(text, lo, hi):
            start, end = m.span()
            if not fewest <= len(_NOT_DIGITS.sub(b"", m.group())) <= most or _glued_right(text, end):
                continue
            if pattern is _INTERNATIONAL:  # "+" may follow a dot ("tel.+44…"); "+35236450.6" is a decimal
                decimal = m.group().count(b".") == 1 and b"." in m.group()[-3:]
                if not (start and text[start - 1] in _WORDISH) and not decimal:
                    return True
            elif not _glued_left(text, start) and not _IBAN_GROUP.fullmatch(text, max(0, start - 5), start):
                return True  # (not the digits of an IBAN's "NL91 ABNA 0417 1643 00")
    return False


def _global_address(candidate: bytes, end: int, text: bytes) -> bool:
    """A host on the internet: not a network (``…/24``), nor in a special-purpose range."""
    if text[end:end + 1] == b"/" and text[end + 1:end + 2].isdigit():
        return False
    try:
        address = ipaddress.ip_address(candidate.decode())
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:  # global unicast is 2000::/3; "x[1::4]" is a slice
            return address.packed[0] >> 5 == 1 and address.is_global
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _ipv4_in(text: bytes, lo: int, hi: int) -> bool:
    for m in _IPV4.finditer(text, lo, hi):  # "7.1.4.34", "8.2.4.44": a version, a section
        if m.group()[1:6:2] != b"..." and _bounded(text, *m.span()) and _global_address(m.group(), m.end(), text):
            return True
    return False


def _scan_numbers(text: bytes, shape: bytes, wanted: set[str], found: set[str]) -> None:
    """Each run of digits and separators gets the checks its shape allows. Most (dates, prices,
    decimals, short ids) have under nine digits and three dots: two counts, no pattern."""
    for run in _NUMBER_RUN.finditer(shape):
        seg = run.group()
        digits, dots = seg.count(b"9"), seg.count(b".")
        if digits < 9 and (dots < 3 or len(seg) < 16 and text.startswith(_PRIVATE, run.start())):
            continue  # (the commonest private addresses need no pattern either)
        lo, hi = run.span()
        first, spaced = lo, b"_" in seg
        lo -= lo > 0 and text[lo - 1] in b"+("
        for kind, plausible, check in (
            ("ip_address", dots >= 3, _ipv4_in),
            ("phone", digits >= 9 and (lo < first or len(seg) - digits >= 2 or text[first] == 0x30), _phone_in),
            ("national_id", digits >= 9 and spaced, _national_number_in),
            ("payment_card", digits >= 13 and (spaced or b"9" * 13 in seg), _card_in),
        ):
            if plausible and kind in wanted and kind not in found and check(text, lo, hi):
                found.add(kind)
        if wanted <= found:
            return
    if "national_id" in wanted - found and b"999999999" in shape and _ssn_after_word(text):
        found.add("national_id")


def _ssn_after_word(text: bytes) -> bool:
    """Nine bare digits right after "SSN" or "social security (number)", in any case."""
    lower = text.lower()
    for word in (b"ssn", b"social security"):
        i = lower.find(word)
        while i >= 0:
            m = _SSN_AFTER_WORD.match(text, i + len(word))
            if m and not (i and text[i - 1] in _WORDISH) and _ssn_ok(m[1][:3], m[1][3:5], m[1][5:]):
                return True
            i = lower.find(word, i + 1)
    return False


# ------------------------------------------------------------------ letters and digits

_IBAN = re.compile(rb"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?")
_NINO = re.compile(rb"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]")
_NINO_NEVER = (b"BG", b"GB", b"KN", b"NK", b"NT", b"TN", b"ZZ")


def _iban_at(text: bytes, i: int) -> bool:
    m = _IBAN.match(text, i)
    if m is None or _glued_left(text, i):
        return False
    compact = m.group().replace(b" ", b"").decode()
    length = IBAN_LENGTHS.get(compact[:2], 99)
    end = i + length + ((length - 1) // 4 if text[i + 4] == 0x20 else 0)  # in fours, or bare
    if len(compact) < length or _glued_right(text, end):
        return False
    return int((compact[4:length] + compact[:4]).translate(_LETTER_VALUES)) % 97 == 1


def _scan_codes(text: bytes, shape: bytes, wanted: set[str], found: set[str]) -> None:
    """IBANs (shape ``AA99``) and UK National Insurance numbers (``AA99`` or ``AA 99``)."""
    for literal in (b"AA99", b"AA_99"):
        i = shape.find(literal)
        while i >= 0 and not wanted <= found:
            if "iban" in wanted and literal == b"AA99" and _iban_at(text, i):
                found.add("iban")
            nino = "national_id" in wanted and _NINO.match(text, i)
            if nino and nino.group()[:2] not in _NINO_NEVER and _bounded(text, *nino.span()):
                found.add("national_id")
            i = shape.find(literal, i + 1)


# ------------------------------------------------------------------ e-mail, IPv6

_EMAIL_DOMAIN = re.compile(rb"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z0-9_-])")
_LOCAL = frozenset(_DIGITS + _UPPER + _LOWER + b"._%+-")
_IPV6_HINT = re.compile(  # "::" then a group that ends ("std::collections" does not), or six colons
    rb":(?::(?:[0-9A-Fa-f]{1,4})?(?![0-9A-Za-z_])|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){4}:)")
_IPV6_TAIL = re.compile(rb"[0-9A-Fa-f:.]*")
_IPV6_HEAD = frozenset(b"0123456789abcdefABCDEF:")


def _email_in(text: bytes) -> bool:
    for m in _EMAIL_DOMAIN.finditer(text):
        at, end = m.span()
        start = at
        while start > 0 and text[start - 1] in _LOCAL:
            start -= 1
        if start == at or text[at - 1] == 0x2E or text[max(0, start - 3):start] == b"://":
            continue  # "@decorator", "a.@b", a URL's userinfo
        if not (end + 1 < len(text) and text[end] == 0x3A and text[end + 1] not in b" \t\r\n"):
            return True  # (not scp-style git@github.com:owner/repo)
    return False


def _ipv6_in(text: bytes) -> bool:
    pos = 0
    while (m := _IPV6_HINT.search(text, pos)) is not None:
        start = m.start()
        while start > 0 and text[start - 1] in _IPV6_HEAD and m.start() - start < 40:
            start -= 1
        candidate = text[start:_IPV6_TAIL.match(text, m.start()).end()].rstrip(b".")
        end = start + len(candidate)
        pos = max(end, m.start() + 1)
        if (len(candidate) <= 45 and candidate.count(b":") >= 2
                and _HAS_DIGIT.search(candidate)  # "e::a" is a Rust path or a C++ scope
                and _bounded(text, start, end)
                and _global_address(candidate, end, text)):
            return True
    return False


# ------------------------------------------------------------------ secrets

_PREFIXED = re.compile(rb"""sk-(?:ant-|proj-|svcacct-)?[A-Za-z0-9_-]{20,} | [rs]k_(?:live|test)_[A-Za-z0-9]{16,}
    | A[KS]IA[A-Z0-9]{16} | AIza[A-Za-z0-9_-]{30,} | xai-[A-Za-z0-9]{20,}
    | gh[pousr]_[A-Za-z0-9]{30,} | github_pat_[A-Za-z0-9_]{30,} | glpat-[A-Za-z0-9_-]{20,}
    | xox[abposr]-[A-Za-z0-9-]{10,} | (?:hf|gsk|npm)_[A-Za-z0-9]{20,} | pypi-AgE[A-Za-z0-9_-]{20,}
    | eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*""", re.VERBOSE)
_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_USERINFO = re.compile(rb"://[A-Za-z0-9._~%+-]+:([^\s/@:\[\]]{6,})@")
_PLACEHOLDER = re.compile(  # a URL's password that is not one: "${PW}", "<pw>", "mypassword"
    rb"^[$<{*%]|pass|pwd|secret|token|changeme|your|xxx|^my|^repo$", re.IGNORECASE)
MIN_RANDOM_LENGTH = 32
MIN_BITS_PER_CHAR = 3.8  # random 32-character base62: 4.1+ bits a character 999 times in 1,000
MAX_PLAIN_SHARE = 0.6  # random 32-character tokens stay below it ~99 times in 100
_PIECES, _WORD = re.compile(rb"[/_+-]"), re.compile(rb"[A-Z]?[a-z]{3,}|[A-Z]{3,}(?![a-z])")


def plain_share(token: bytes) -> float:
    """How much of ``token`` reads as words: single-case pieces between ``/_+-`` (``blob``,
    ``v1``, ``a1b2c3d``, ``MAX``) and, in mixed pieces, words (``Validator``, ``TLS``).
    Identifiers, paths and model names score near 1; random base62 or base64 ~0.25."""
    plain = 0
    for piece in _PIECES.split(token):
        if piece.islower() or piece.isupper() or piece.isdigit():
            plain += len(piece)
        else:
            plain += sum(m.end() - m.start() for m in _WORD.finditer(piece))
    return plain / len(token)


def _random_looking(token: bytes) -> bool:
    """Long, upper and lower case and digits, mostly not words, varied characters. Hex (SHAs,
    UUIDs) is single-case; identifiers, paths and model names (``meta-llama/Llama-3``) are words."""
    if len(token) < MIN_RANDOM_LENGTH or token.islower() or token.isupper() or not _HAS_DIGIT.search(token):
        return False
    if plain_share(token) >= MAX_PLAIN_SHARE:
        return False
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values()) >= MIN_BITS_PER_CHAR


def _secret_in(text: bytes) -> bool:
    if b"PRIVATE KEY" in text and _PEM.search(text):
        return True
    if b"://" in text and any(not _PLACEHOLDER.search(m[1]) for m in _USERINFO.finditer(text)):
        return True
    tokens = text.translate(_TOKEN_SHAPE)
    start = tokens.find(_TOKEN_RUN)
    while start >= 0:
        end = tokens.find(b" ", start)
        end = len(tokens) if end < 0 else end
        key = _PREFIXED.match(text, start)
        if key and _HAS_DIGIT.search(key.group(), 3):  # "sk-learn-compatible-…" is prose
            return True
        if _random_looking(text[start:end].strip(b"/+_-")):
            return True
        start = tokens.find(_TOKEN_RUN, end)
    return False


# ------------------------------------------------------------------ entry point


def _scan(text: str, wanted: set[str], found: set[str]) -> None:
    raw = text.encode("ascii") if text.isascii() else text.encode("ascii", "replace")
    if "email" in wanted and b"@" in raw and _email_in(raw):
        found.add("email")
    if "secret" in wanted and _secret_in(raw):
        found.add("secret")
    if "ip_address" in wanted and b":" in raw and _ipv6_in(raw):
        found.add("ip_address")
    if wanted <= found:
        return
    shape = raw.translate(_SHAPE)
    if b"9" not in shape:
        return  # every kind left needs a digit
    if not _NUMBER_KINDS.isdisjoint(wanted - found):
        _scan_numbers(raw, shape, wanted, found)
    if not _CODE_KINDS.isdisjoint(wanted - found):
        _scan_codes(raw, shape, wanted, found)


_NUMBER_KINDS = frozenset({"phone", "payment_card", "national_id", "ip_address"})
_CODE_KINDS = frozenset({"iban", "national_id"})


def detect(texts: Iterable[str], kinds: Collection[PiiKind] = KINDS) -> frozenset[PiiKind]:
    """The kinds among ``kinds`` that occur in any of ``texts``; never the values.

    Each text is scanned on its own (a value split over two messages is not joined). A kind
    once found is not looked for again; scanning stops when all are found. An unknown kind
    raises ``ValueError``; a bare ``str`` (an iterable of characters) raises ``TypeError``.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("detect() takes an iterable of texts, not one string")
    wanted = set(kinds)
    unknown = wanted.difference(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
    found: set[str] = set()
    for text in texts:
        if wanted <= found:
            break
        if text:
            _scan(text, wanted - found, found)
    return frozenset(found)  # type: ignore[arg-type]
