"""The life of one ``llm_request``, as a sans-io state machine: it ends in exactly one answer.

Rules
-----
1. Every request is answered exactly once: ``"ok"`` or one error code. A second answer is a
   bug in the caller and raises ``LifecycleError`` naming the first outcome, which is kept.
2. A request is refused straight from ``routing`` (no candidates, a duplicate request id,
   the agent shutting down) or, once a plan with at least one candidate exists, answered
   from ``attempting`` after zero or more attempts.
3. Attempts happen only between the plan and the answer; ``attempts`` counts them.
4. A ``(phase, event)`` pair that ``TRANSITIONS`` does not list raises; nothing is ignored.

Theory of operation
-------------------
The agent (the imperative shell) allocates one ``RequestLifecycle`` per request and drives
it: ``process_plan()`` when routing produced candidates, ``process_attempt()`` before each
provider call, ``process_answer(outcome)`` when it has decided the one answer, and only then
publishes that answer. Each method looks the next phase up in ``TRANSITIONS``; a missing pair
raises before anything changes.

The answer is published *after* the request's deadline scope has closed. The deadline bounds
the provider work only (the attempts and their fallbacks), not the publish. Were the publish
inside the scope, a slow publish of an ``"ok"`` could be cancelled by the deadline, and the
timeout path would then answer ``"timeout"`` as well: two answers to one request. With the
answer decided inside the scope, recorded here, and published outside it, the deadline can
only ever choose between ``"ok"`` and ``"timeout"``, never produce both; and any code path
that still tried a second answer fails loudly here instead of sending it.

The object is allocated on the hot path, so it is a slots dataclass over three plain fields
and each method is one dict lookup. It reads no clock and does no I/O.

| phase      | event   | next       | when                                                  |
|------------|---------|------------|-------------------------------------------------------|
| routing    | plan    | attempting | routing produced at least one candidate               |
| routing    | answer  | answered   | refused before any attempt                            |
| attempting | attempt | attempting | one provider call (first choice or a fallback)        |
| attempting | answer  | answered   | ``"ok"``, or the error code once the plan is used up  |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["routing", "attempting", "answered"]


class LifecycleError(Exception):
    """An event the request lifecycle does not allow (a caller bug)."""


TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    ("routing", "plan"): "attempting",  # a plan with at least one candidate
    ("routing", "answer"): "answered",  # refused before any attempt
    ("attempting", "attempt"): "attempting",
    ("attempting", "answer"): "answered",
}
"""``(phase, event) -> next phase``. A pair not listed is illegal and raises."""


@dataclass(slots=True)
class RequestLifecycle:
    phase: Phase = "routing"
    attempts: int = 0
    outcome: str = ""
    """``"ok"`` or the error code of the one answer; empty until answered."""

    def process_plan(self) -> None:
        """Routing produced a plan with at least one candidate."""
        self.phase = self._next("plan")

    def process_attempt(self) -> None:
        """One provider call is about to start."""
        self.phase = self._next("attempt")
        self.attempts += 1

    def process_answer(self, outcome: str) -> None:
        """Record the one answer (``"ok"`` or an error code) before publishing it."""
        if not outcome:
            raise LifecycleError("an answer needs an outcome: 'ok' or an error code")
        self.phase = self._next("answer")
        self.outcome = outcome

    @property
    def answered(self) -> bool:
        return self.phase == "answered"

    def _next(self, event: str) -> Phase:
        nxt = TRANSITIONS.get((self.phase, event))
        if nxt is None:
            if self.phase == "answered":
                raise LifecycleError(
                    f"{event!r} after the request was already answered {self.outcome!r}"
                )
            raise LifecycleError(f"{event!r} is not allowed in phase {self.phase!r}")
        return nxt
