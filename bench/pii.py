"""``python -m bench.pii``: what the PII detector costs per KB of prompt, and for a short prompt.

    python -m bench.pii               best of 7 timeit rounds for each corpus
    python -m bench.pii --repeat 15   more rounds

Goal (the issue): at most 50 us per KB of prompt on the 2-core bench machine. Corpora:

- ``prose``: ordinary English with dates, prices, versions, order numbers (no PII);
- ``prose, non-ASCII``: the same kind of text with accents, CJK and emoji (the slower
  ``encode(errors="replace")`` path);
- ``code``: Python, JavaScript, Rust, YAML and a shell session with hex colours, UUIDs,
  git SHAs, ``::`` paths, localhost and private addresses (no PII);
- ``project source``: this repository's ``router_agent/`` (``pii.py`` aside: its
  docstring is full of examples), read from disk;
- ``logs``: number-dense log lines (timestamps, latencies, private addresses): the path
  where every digit run is a candidate;
- ``PII-laden``: prose with every kind sprinkled through it, so detection stops early
  only at the last kind;
- ``short prompt``: one sentence, reported in us per call, not per KB.

Each row also says which kinds were found: the clean corpora must find none.
Figures are printed, never asserted (bench/README.md).
"""

from __future__ import annotations

import argparse
import timeit
from pathlib import Path

from router_agent.core.pii import detect

PROSE = """\
The quarterly review took place on March 3rd, 2024, in the small meeting room on the
second floor. Attendance was good: fourteen people came, and three more joined from the
Lisbon office. The agenda had five items, and we got through four of them before lunch.
First, the budget. We spent $48,250.75 of the $60,000 allocated for the quarter, which
leaves about 19.6% for April. The cloud bill alone was $12,430, up 8% from last quarter,
mostly because the staging cluster ran over the holidays. Order 100045 for the new
laptops arrived on 2024-02-28; order 100046 is still pending and should ship by Friday.
Second, the release plan. Version 2.4.1 goes out next week with the fixes for the
export bug (issue 1873) and the slow search page. Version 2.5 follows in May, with the
new dashboard. The team estimates 6 to 8 weeks of work, or roughly 240 hours, and asked
for one more reviewer. Python 3.11 is now the minimum; 3.9 support ends on June 30.
Third, hiring: two offers went out and one was accepted. The new engineer starts on
April 15 and will sit with the platform group for the first 90 days.
Fourth, the office move. The lease on the third floor ends in September. Rent would
rise from 4,100 to 4,750 euros a month if we stayed; the building across the street
asks 4,300 for a slightly larger space. A decision is due by the end of the month.
We ran out of time for the fifth item (the travel policy), which moves to next week.
"""

PROSE_NON_ASCII = """\
Résumé de la réunion du 3 mars : l'équipe a validé la version 2.4.1 et le budget de
48 250 € pour le trimestre. Nächste Woche prüfen wir die Größe des Clusters (≈ 12 Knoten).
会议记录：第二季度的预算为六万美元，新版本将在五月发布。🚀 Всё идёт по плану, сказал Пётр.
Le déménagement est prévu pour septembre ; le loyer passerait de 4 100 € à 4 750 €.
"""

CODE = '''\
import uuid
from dataclasses import dataclass

THEME = {"primary": "#1f6feb", "danger": "#d73a49", "muted": "#6a737d", "bg": "#ffffff"}
DEFAULT_TIMEOUT_S = 30.0
RETRY_BACKOFF = [0.5, 1.0, 2.0, 4.0]


@dataclass(frozen=True)
class Deployment:
    provider: str
    model: str = "gpt-4o-mini-2024-07-18"
    base_url: str = "http://127.0.0.1:8080/v1"
    request_id: str = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"

    def key(self) -> tuple[str, str]:
        return (self.provider, self.model)


def parse_version(text: str) -> tuple[int, ...]:
    """'1.2.3' -> (1, 2, 3); used for the 0.28.1 and 2.16.0 compatibility checks."""
    return tuple(int(part) for part in text.split("."))


def test_commit_is_pinned():
    assert COMMIT == "9fceb02d0ae598e95dc970b74767f19372d61af8"
    assert uuid.UUID("123e4567-e89b-12d3-a456-426614174000").version == 1
    assert parse_version("3.11.7") >= (3, 11)

// JavaScript
export function clamp(value, low = 0, high = 255) {
  return Math.min(high, Math.max(low, value)); // 0x00ff00 & 0xff
}
const colors = ["#fafbfc", "#e1e4e8", "#0366d6"];
const sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// Rust
use std::collections::HashMap;
use tokio::sync::mpsc::{self, Receiver, Sender};
impl Router {
    pub fn new(config: &config::Config) -> Result<Self, error::Error> {
        let (tx, rx) = mpsc::channel::<Request>(1024);
        std::thread::spawn(move || worker::run(rx));
        Ok(Router { table: HashMap::new(), tx, strategy: strategy::Strategy::Cheapest })
    }
}

# docker-compose.yml
services:
  nats:
    image: nats:2.10.14-alpine
    ports: ["4222:4222", "8222:8222"]
    networks:
      backend:
        ipv4_address: 172.20.0.5
  router:
    environment:
      - OPENAI_API_KEY=${OPENAI_API_KEY}
      - LOG_LEVEL=info

$ git log --oneline -3
1fdaffb Regression test over the bus
4f767ae Fuzzing: hostile and mutated signals
$ python -m pytest -q tests/test_breaker.py
........................................ 40 passed in 0.84s
$ curl -s http://localhost:8222/varz | jq .mem
52428800
'''

LOGS = """\
2024-03-03T10:15:02.113Z INFO  request id=8841 upstream=10.0.3.17:8080 status=200 took=182.4ms tokens=1532
2024-03-03T10:15:02.348Z WARN  retry attempt=2 delay=0.500s upstream=10.0.3.18:8080 status=503 took=30001.0ms
2024-03-03T10:15:03.001Z INFO  request id=8842 upstream=192.168.1.20:11434 status=200 took=95.1ms tokens=210
2024-03-03T10:15:03.456Z DEBUG breaker deployment=(openai, gpt-4o) failures=3/5 cooldown=30.0 opened_at=1709460903.456
2024-03-03T10:15:04.789Z INFO  budget spent=12.3456 limit=100.00 window=86400 remaining=87.6544 ratio=0.123456
"""

PII_LADEN = """\
Hi team, please update the customer record for Jane Roe (jane.roe@example.org, mobile
+44 7700 900123). Her card on file, 4111 1111 1111 1111, expired in 2023; the new one ends
in 4242. Refunds go to her account DE89 3704 0044 0532 0130 00 at the Berlin branch.
"""
PII_LADEN_TAIL = """\
For the tax form we need her SSN (078-05-1120 is the old placeholder, use 219-09-9999 for
the test) and the login events from 93.184.216.34. The integration still uses the key
sk-proj-Xq8vN2pL5tR9wK3mB7cJ1dF6hG4sA0eZyU; please rotate it after the migration.
"""

SHORT_PROMPT = (
    "Summarize the meeting notes from March 3rd: the team agreed to ship v2.4.1 by Friday "
    "and to cap the cloud bill at $12,500 for the quarter."
)


def _project_source() -> str:
    root = Path(__file__).resolve().parent.parent / "router_agent"
    return "\n".join(
        path.read_text(encoding="utf-8") for path in sorted(root.rglob("*.py")) if path.name != "pii.py"
    )


def corpora() -> dict[str, str]:
    """Name to text; each text is at least ~16 KB (the short prompt aside)."""
    base = {
        "prose": PROSE,
        "prose, non-ASCII": PROSE_NON_ASCII,
        "code": CODE,
        "logs": LOGS,
        "PII-laden": PROSE + PII_LADEN + PROSE + PII_LADEN_TAIL,
    }
    out = {name: text * max(1, 16_384 // len(text)) for name, text in base.items()}
    out["project source"] = _project_source()
    return out


def best_us(call, repeat: int) -> float:
    """Best of ``repeat`` timeit rounds, in microseconds per call."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pii", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit rounds; the best is kept")
    args = parser.parse_args(argv)

    print(f"{'corpus':<20} {'KB':>7} {'us/KB':>8} {'us/call':>9}  kinds found")
    for name, text in corpora().items():
        kb = len(text.encode("utf-8")) / 1024
        us = best_us(lambda text=text: detect([text]), args.repeat)
        kinds = ", ".join(sorted(detect([text]))) or "-"
        print(f"{name:<20} {kb:>7.1f} {us / kb:>8.2f} {us:>9.1f}  {kinds}")
    messages = ["You are a helpful assistant.", SHORT_PROMPT]
    us = best_us(lambda: detect(messages), args.repeat)
    kb = sum(len(m) for m in messages) / 1024
    print(f"{'short prompt':<20} {kb:>7.2f} {us / kb:>8.2f} {us:>9.1f}  {', '.join(sorted(detect(messages))) or '-'}")
    print("goal: <= 50 us per KB of prompt")


if __name__ == "__main__":
    main()
