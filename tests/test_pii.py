"""detect(): which kinds of PII a request holds, validated, never the values, and cheap on clean text."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core.pii import IBAN_LENGTHS, KINDS, MAX_PLAIN_SHARE, detect, plain_share


def found(text: str) -> frozenset[str]:
    return detect([text])


def luhn_complete(partial: str) -> str:
    """``partial`` plus the Luhn check digit that makes it valid."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return partial + str((10 - total % 10) % 10)


def iban_complete(country: str, bban: str) -> str:
    """A valid IBAN: the country, its two check digits, the account."""
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def in_fours(value: str, sep: str = " ") -> str:
    return sep.join(value[i:i + 4] for i in range(0, len(value), 4))


# ------------------------------------------------------------------ the API


def test_kinds_are_the_seven_of_the_issue():
    assert KINDS == ("email", "phone", "payment_card", "iban", "national_id", "ip_address", "secret")


def test_nothing_in_nothing_out():
    assert detect([]) == frozenset()
    assert detect(["", ""]) == frozenset()


def test_a_bare_string_is_a_caller_bug():
    with pytest.raises(TypeError):
        detect("jane@example.org")  # type: ignore[arg-type]


def test_an_unknown_kind_is_a_caller_bug():
    with pytest.raises(ValueError, match="passport"):
        detect(["x"], kinds=["email", "passport"])  # type: ignore[list-item]


def test_kinds_are_found_across_messages_and_texts_are_not_joined():
    assert detect(["mail jane@example.org", "card 4111 1111 1111 1111"]) == {"email", "payment_card"}
    assert detect(["4111 1111", "1111 1111"]) == frozenset()  # one value split over two messages


ALL_KINDS_TEXT = (
    "Jane (jane.roe@example.org, +44 7700 900123) pays with 4111-1111-1111-1111 from "
    "DE89 3704 0044 0532 0130 00; SSN 219-09-9999; she logged in from 93.184.216.34 "
    "with key ghp_R2d9Lq7Xz0Vb4Nf8Kc1Tw6Yp3Hs5Jm9Ae2Ui"
)


def test_the_all_kinds_text_has_all_kinds():
    assert found(ALL_KINDS_TEXT) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_the_kinds_filter_looks_for_those_kinds_only(kind):
    assert detect([ALL_KINDS_TEXT], kinds=[kind]) == {kind}


def test_no_kinds_wanted_finds_nothing():
    assert detect([ALL_KINDS_TEXT], kinds=()) == frozenset()


@settings(max_examples=100)
@given(kinds=st.sets(st.sampled_from(KINDS)), text=st.sampled_from([ALL_KINDS_TEXT, "plain words", "call 415-555-2671"]))
def test_a_filter_is_an_intersection(kinds, text):
    assert detect([text], kinds=kinds) == detect([text]) & kinds


@settings(max_examples=300)
@given(texts=st.lists(st.text(max_size=200), max_size=4))
def test_detect_returns_kinds_never_values(texts):
    result = detect(texts)
    assert isinstance(result, frozenset)
    assert result <= set(KINDS)


def test_the_result_carries_no_value():
    text = "card 4111 1111 1111 1111, mail jane.roe@example.org, key AKIAZ7Q3MX5B2KD9RW4T"
    shown = repr(detect([text]))
    for value in ("4111", "jane", "example", "AKIA"):
        assert value not in shown


# ------------------------------------------------------------------ e-mail


@pytest.mark.parametrize("text", [
    "write to jane.roe@example.org today",
    "<a+tag@sub.example.co.uk>",
    "From: J. Roe <j_roe-1999@mail.example.com>",
    "résumé envoyé à jean.dupont@exemple.fr",
])
def test_email_addresses(text):
    assert found(text) == {"email"}


@pytest.mark.parametrize("text", [
    "@property\ndef name(self): ...",
    "ping @jane on chat",
    "user@localhost",
    "foo@bar.c",
    "git clone git@github.com:owner/repo.git",
    "npm i @types/node",
    "x = a @ b.T",
])
def test_not_email_addresses(text):
    assert found(text) == frozenset()


# ------------------------------------------------------------------ phone


@pytest.mark.parametrize("text", [
    "call +1 415 555 2671",
    "call +14155552671",
    "tel.+44 20 7946 0958",
    "+44 (0)20 7946 0958",
    "+49 30 1234567",
    "(415) 555-2671",
    "415-555-2671",
    "415.555.2671",
    "1-800-555-0199",
    "020 7946 0958",
    "07700 900123",
    "01 23 45 67 89",
])
def test_phone_numbers(text):
    assert found(text) == {"phone"}


@pytest.mark.parametrize("text", [
    "on 2024-01-15 at 10:30",
    "order 4155552671 shipped",  # a bare digit run is an id
    "it costs $1,234,567.89",
    "call 555-1234",  # seven digits
    "115-555-2671",  # no area code starts with 1
    "Decimal('+35236450.6')",
    "ISBN 978-3-16-148410-0",
    "1 234 567 890 people",
    "timestamp 1700000000000",
    "x+1234567890",
])
def test_not_phone_numbers(text):
    assert found(text) == frozenset()


# ------------------------------------------------------------------ payment cards

CARDS = [
    "4111111111111111",  # Visa
    "4012888888881881",  # Visa
    "4222222222222",  # Visa, 13 digits
    "5555555555554444",  # Mastercard
    "2223003122003222",  # Mastercard, 2-series
    "378282246310005",  # Amex
    "6011111111111117",  # Discover
    "3530111333300000",  # JCB
    "30569309025904",  # Diners
    "6200000000000005",  # UnionPay
]


@pytest.mark.parametrize("number", CARDS)
def test_valid_cards_bare_spaced_and_dashed(number):
    assert found(f"card {number} exp 12/27") == {"payment_card"}
    assert found(f"card {in_fours(number)}.") == {"payment_card"}
    assert found(f"card {in_fours(number, '-')}") == {"payment_card"}


def test_amex_in_its_own_grouping():
    assert found("amex 3782 822463 10005") == {"payment_card"}


@pytest.mark.parametrize("number", CARDS)
def test_one_digit_off_fails_luhn(number):
    for i in range(len(number)):
        wrong = number[:i] + str((int(number[i]) + 1) % 10) + number[i + 1:]
        assert "payment_card" not in found(f"card {wrong}"), wrong


@pytest.mark.parametrize("text", [
    "1234567812345670",  # Luhn-valid, no network starts with 1
    "4111111111111111111111",  # longer than any card
    "id 94111111111111111",  # glued to another digit
    "pi=3.4111111111111111",
    "sha a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "4111 1111 1111 111",  # fifteen digits: not a Visa length
])
def test_not_cards(text):
    assert "payment_card" not in found(text)


NETWORKS = [("4", 16), ("4", 13), ("4", 19), ("34", 15), ("37", 15), ("51", 16), ("55", 16),
            ("2221", 16), ("2720", 16), ("6011", 16), ("65", 16), ("3530", 16), ("36", 14), ("62", 16)]
SURROUNDING = st.text(alphabet=string.ascii_letters + string.digits + " .,;:!?()-+/'\"\n", max_size=60)


@st.composite
def cards(draw) -> str:
    prefix, length = draw(st.sampled_from(NETWORKS))
    body = draw(st.text(alphabet=string.digits, min_size=length - len(prefix) - 1, max_size=length - len(prefix) - 1))
    number = luhn_complete(prefix + body)
    style = draw(st.sampled_from(["bare", "spaces", "dashes"]))
    return {"bare": number, "spaces": in_fours(number), "dashes": in_fours(number, "-")}[style]


@settings(max_examples=400)
@given(card=cards(), before=SURROUNDING, after=SURROUNDING)
def test_a_valid_card_anywhere_in_text_is_found(card, before, after):
    assert "payment_card" in detect([f"{before} {card} {after}"])


# ------------------------------------------------------------------ IBAN

IBANS = [
    "DE89370400440532013000", "GB82WEST12345698765432", "FR1420041010050500013M02606",
    "NL91ABNA0417164300", "ES9121000418450200051332", "IT60X0542811101000000123456",
    "BE68539007547034", "CH9300762011623852957", "NO9386011117947", "PL61109010140000071219812874",
    "AT611904300234573201", "MT84MALT011000012345MTLCAST001S", "LC55HEMM000100010012001200023015",
]


@pytest.mark.parametrize("iban", IBANS)
def test_valid_ibans_bare_and_in_fours(iban):
    assert found(f"pay to {iban} please") == {"iban"}
    assert found(f"pay to {in_fours(iban)}.") == {"iban"}


@pytest.mark.parametrize("iban", IBANS)
def test_a_bad_checksum_is_not_an_iban(iban):
    for i in (2, 3, 6, len(iban) - 1):
        c = iban[i]
        wrong = iban[:i] + ("1" if c != "1" else "2") + iban[i + 1:]
        assert "iban" not in found(f"pay to {wrong}"), wrong


@pytest.mark.parametrize("text", [
    "DE89370400440532013000123",  # longer than Germany's 22
    "DE8937040044053201300",  # shorter
    "XX89370400440532013000",  # no such country
    "de89370400440532013000",  # lower case is not looked for
    "IBANDE89370400440532013000",  # glued to a word
])
def test_not_ibans(text):
    assert "iban" not in found(text)


@st.composite
def ibans(draw) -> str:
    country = draw(st.sampled_from(sorted(IBAN_LENGTHS)))
    size = IBAN_LENGTHS[country] - 4
    bban = draw(st.text(alphabet=string.ascii_uppercase + string.digits, min_size=size, max_size=size))
    iban = iban_complete(country, bban)
    return in_fours(iban) if draw(st.booleans()) else iban


@settings(max_examples=400)
@given(iban=ibans(), before=SURROUNDING, after=SURROUNDING)
def test_a_valid_iban_anywhere_in_text_is_found(iban, before, after):
    assert "iban" in detect([f"{before} {iban} {after}"])


# ------------------------------------------------------------------ national ids


@pytest.mark.parametrize("text", [
    "SSN 123-45-6789",
    "ssn: 219 09 9999",
    "ITIN 912-70-1234",
    "SSN: 219099999",
    "Social Security Number 219099999",
    "my ssn is 219099999",
    "SSN# 219099999",
    "NINO AB 12 34 56 C",
    "ni AB123456C",
    "SIN 130-692-544",  # Luhn-valid
])
def test_national_ids(text):
    assert found(text) == {"national_id"}


@pytest.mark.parametrize("text", [
    "000-12-3456",  # area 000
    "666-12-3456",  # area 666
    "900-12-3456",  # 9xx with an ITIN-less group
    "123-00-4567",  # group 00
    "123-45-0000",  # serial 0000
    "123-45 6789",  # mixed separators
    "id 219099999",  # nine bare digits with no "SSN" beside them
    "lessn 219099999",
    "GB 12 34 56 A",  # GB is never a NINO prefix
    "130-692-545",  # SIN with a bad check digit
])
def test_not_national_ids(text):
    assert "national_id" not in found(text)


# ------------------------------------------------------------------ IP addresses


@pytest.mark.parametrize("text", [
    "login from 93.184.216.34",
    "host=203.0.114.5:443",
    "[2606:4700:4700::1111]:53",
    "2a00:1450:4001:82b::200e",
    "2606:2800:220:1:248:1893:25c8:1946",
    "::ffff:93.184.216.34",
])
def test_ip_addresses(text):
    assert found(text) == {"ip_address"}


@pytest.mark.parametrize("text", [
    "127.0.0.1", "0.0.0.0", "10.0.3.17", "192.168.1.20", "172.16.0.5", "169.254.169.254",
    "100.64.0.1", "255.255.255.0", "224.0.0.1", "192.0.2.10", "198.51.100.7",  # special ranges
    "version 1.2.3.4", "section 8.2.4.44", "python 3.11.7", "oid 1.3.6.1.4.1", "999.1.1.1",
    "net 93.184.216.0/24", "::1", "fe80::1", "2001:db8::1", "std::vector<int>", "a::b",
    "x[1::4]", "at 12:30:45", "mac 00:1a:2b:3c:4d:5e",
])
def test_not_ip_addresses(text):
    assert "ip_address" not in found(text)


# ------------------------------------------------------------------ secrets

SECRETS = [
    "sk-proj-Xq8vN2pL5tR9wK3mB7cJ1dF6hG4sA0eZyU",
    "sk-ant-api03-Zp4Kq9Lm2Xv7Bn1Wc8Rt5Yd3Hf6Gs0Ja",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "AKIAZ7Q3MX5B2KD9RW4T",
    "AIzaSyD3x8Qm1Lk5Vb9Nc2Hf7Rt4Yp6Ws0Ze1Ug",
    "ghp_R2d9Lq7Xz0Vb4Nf8Kc1Tw6Yp3Hs5Jm9Ae2Ui",
    "github_pat_11ABCDE2F0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789",
    "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
    "hf_Qm3Lx9Vb2Nc7Kt5Rw1Yp8Hs4Jd6Fg0Ze",
    "gsk_8Xq2Lm5Nv9Bc3Kt7Rw1Yp4Hs6Jd0Fg2Ze5Ua",
    "glpat-Xq8vN2pL5tR9wK3mB7cJ",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "postgres://app:S3cr3tP4ss@db.internal:5432/orders",
    "token: Zq3Xm8Lp2Vn7Bc4Kt9Rw1Yh6Jd5Fg0Se3Ua8",  # random base62, no prefix
    "aws_secret=wJ8rXUtnFEMI/K7MDENG+bPxRfiCYz9k4Q2LmVpT",  # random base64
]


@pytest.mark.parametrize("text", SECRETS)
def test_secrets(text):
    assert found(text) == {"secret"}


@pytest.mark.parametrize("text", [
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",  # git SHA
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "id 123e4567-e89b-12d3-a456-426614174000",  # UUID
    "ID 123E4567-E89B-12D3-A456-426614174000",
    "sk-learn-compatible-estimators-and-pipelines",  # no digit: prose
    "a task-based-approach-for-everything-we-do",
    "class V1ValidatorWithValuesKwOnlyClsMethod:",
    "model meta-llama/Meta-Llama-3-70B-Instruct",
    "AzureFoundryFlux2ImageEditConfig and TwelveLabsMarengo3EmbeddingRequest",
    "https://github.com/python/cpython/blob/8c21941ddaf/Lib/sysconfig/__init__.py",
    "test_the_agent_docstring_table_shows_every_route_2",
    "MAX_RETRY_COUNT_FOR_PROVIDER_V2_BACKOFF_SECONDS",
    "postgres://user:password@localhost/db",  # placeholders
    "redis://:${REDIS_PASSWORD}@redis:6379",
    "smb://myuser:mypassword@server/share",
    "-----BEGIN PUBLIC KEY-----",
    "aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3",  # long and mixed, but four characters
    "AKIAIOSFODNNEXAMPLE",  # too short, no digit
])
def test_not_secrets(text):
    assert "secret" not in found(text)


def test_random_tokens_are_found_and_words_are_not():
    """The calibration behind MIN_BITS_PER_CHAR and MAX_PLAIN_SHARE, on a fixed seed."""
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits
    for length, at_least in ((32, 0.97), (40, 0.97), (64, 0.995)):
        tokens = ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(2000)]
        mixed = [t for t in tokens if not t.islower() and not t.isupper() and any(c.isdigit() for c in t)]
        rate = sum(found(f"key {t}") == {"secret"} for t in mixed) / len(mixed)
        assert rate >= at_least, (length, rate)
    for word in (b"V1ValidatorWithValuesKwOnlyClsMethod", b"com/python/cpython/blob/8c21941ddaf/Lib"):
        assert plain_share(word) >= MAX_PLAIN_SHARE


# ------------------------------------------------------------------ clean text

PROSE = [
    "The quarterly review took place on March 3rd, 2024, in the small meeting room.",
    "We spent $48,250.75 of the $60,000 allocated for the quarter, about 19.6% less than planned.",
    "Order 100045 for the new laptops arrived on 2024-02-28; order 100046 ships by Friday.",
    "Version 2.4.1 goes out next week with the fixes for issue #1873 and the slow search page.",
    "Python 3.11 is now the minimum; support for 3.9 ends on June 30 at 17:00 UTC.",
    "Rent would rise from 4,100 to 4,750 euros a month if we stayed past September.",
    "The train leaves at 08:45 from platform 9 and arrives at 12:10, a 3h25 trip.",
    "Mix 250 g of flour, 2 eggs and 300 ml of milk; bake at 180 °C for 25-30 minutes.",
    "Our NPS rose from 31 to 47 between Q1 and Q3, with 1,204 responses in total.",
    "See chapter 4.2.1 and RFC 9110, section 15.5.4, for the status codes.",
    "Invoice INV-2024-00317 is due within 30 days; the PO number is 4500012345.",
    "The build took 1 h 12 min on 16 cores with 64 GB of RAM and a 2 TB disk.",
    "Résumé : la réunion du 3 mars a validé le budget de 48 250 € pour le trimestre.",
    "会议记录：第二季度的预算为六万美元，新版本将在五月发布。",
]

CODE = [
    'THEME = {"primary": "#1f6feb", "danger": "#d73a49", "muted": "#6a737d"}',
    'request_id = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"',
    'assert COMMIT == "9fceb02d0ae598e95dc970b74767f19372d61af8"',
    'BASE_URL = "http://127.0.0.1:8080/v1"; DB = "postgres://postgres:${PGPASSWORD}@db:5432/app"',
    "docker run -p 4222:4222 -p 8222:8222 nats:2.10.14-alpine --subnet 172.20.0.0/16",
    "for (auto& x : std::vector<int>{1, 2, 3}) { total += x * 0x00ff00; }",
    "use std::collections::HashMap; let (tx, rx) = mpsc::channel::<Request>(1024); Self::B",
    "pairs = list(zip(values[::2], values[1::2]))  # 2024-01-15T10:30:00Z",
    "@dataclass(frozen=True)\nclass Deployment:\n    provider: str\n    model: str = 'gpt-4o-mini-2024-07-18'",
    "$ python -m pytest -q tests/test_breaker.py\n40 passed in 0.84s",
    "export OPENAI_API_KEY=${OPENAI_API_KEY}  # never commit the real one",
    "hash = hashlib.sha256(data).hexdigest()  # e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
    "matrix = np.zeros((1024, 768), dtype=np.float32) @ weights.T",
]


@pytest.mark.parametrize("text", PROSE + CODE)
def test_ordinary_text_has_no_pii(text):
    assert found(text) == frozenset()


@settings(max_examples=200)
@given(parts=st.lists(st.sampled_from(PROSE + CODE), min_size=1, max_size=12), sep=st.sampled_from([" ", "\n", "\n\n"]))
def test_any_mix_of_ordinary_text_has_no_pii(parts, sep):
    assert detect([sep.join(parts)]) == frozenset()


@settings(max_examples=300)
@given(st.text(alphabet=string.ascii_letters + " .,;!?'\"()\n", max_size=400))
def test_text_without_digits_at_signs_or_colons_has_no_pii(text):
    assert detect([text]) == frozenset()


def test_the_benchmark_corpora_find_what_they_should():
    from bench import pii as corpora

    for clean in (corpora.PROSE, corpora.PROSE_NON_ASCII, corpora.CODE, corpora.LOGS, corpora.SHORT_PROMPT):
        assert found(clean) == frozenset()
    assert found(corpora.PII_LADEN + corpora.PII_LADEN_TAIL) == set(KINDS)
