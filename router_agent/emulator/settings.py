"""The emulator's settings: timing profiles and fault specs, from a YAML file, flags or the admin API.

One schema (msgspec Structs, unknown keys refused) serves all three ways in, so a typo in
``config/emulator.yaml`` and a bad ``PUT /admin/faults`` fail the same way, naming the key.
See ``config/emulator.yaml`` for an annotated example.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

__all__ = ["EmulatorConfig", "FaultSpec", "ModelProfile", "Outage", "load_config", "to_fault_spec"]

RATE_FIELDS = ("hang_rate", "malformed_rate", "cut_rate", "stall_rate")


def _non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def _status(name: str, value: int) -> None:
    if not 400 <= value <= 599:
        raise ValueError(f"{name} must be 4xx or 5xx, got {value}")


class ModelProfile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How fast one model answers.

    ``ttft_ms`` is the time to the first token (the whole wait for an answer that is not
    streamed, plus generation time); ``None`` uses the emulator's ``latency_ms``.
    ``tokens_per_s`` paces generation (0: all tokens at once). ``jitter`` (0 to 1) scales
    both by a factor drawn uniformly from ``1 ± jitter`` per request, from the emulator's
    seeded random source.
    """

    ttft_ms: float | None = None
    tokens_per_s: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.ttft_ms is not None:
            _non_negative("ttft_ms", self.ttft_ms)
        _non_negative("tokens_per_s", self.tokens_per_s)
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")


class Outage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """From ``start_s`` to ``end_s`` after the emulator started, every request fails with ``status``."""

    start_s: float
    end_s: float
    status: int = 503

    def __post_init__(self) -> None:
        _non_negative("start_s", self.start_s)
        if not self.end_s > self.start_s:
            raise ValueError(f"end_s must be after start_s, got {self.start_s!r}..{self.end_s!r}")
        _status("outage status", self.status)


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The faults injected into one model's requests (``"*"``: every model without its own).

    Checked in this order, the first that applies wins: an outage in progress; ``status``
    (every request fails); ``rate_limit_burst`` (the next N requests get 429, counting down);
    then one random draw against ``error_rates`` (status -> probability) and the ``*_rate``
    kinds. Rates add up to at most 1.

    - ``hang``: no answer at all, until ``hang_s`` passes, the client leaves or the emulator
      closes (then the connection is dropped).
    - ``malformed``: status 200 with a truncated JSON body, or one broken stream event.
    - ``cut``: the connection is closed half-way through the body or the stream.
    - ``stall``: a stream stops half-way and sends nothing more (like ``hang``, mid-stream);
      an answer that is not streamed is cut instead.
    429s carry ``Retry-After`` (whole seconds) and ``retry-after-ms`` from ``retry_after_s``.
    """

    status: int | None = None
    error_rates: dict[int, float] = {}
    rate_limit_burst: int = 0
    retry_after_s: float = 1.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    cut_rate: float = 0.0
    stall_rate: float = 0.0
    hang_s: float = 300.0
    outages: list[Outage] = []

    def __post_init__(self) -> None:
        if self.status is not None:
            _status("status", self.status)
        for code, rate in self.error_rates.items():
            _status("error_rates key", code)
            if not 0 <= rate <= 1:
                raise ValueError(f"error_rates[{code}] must be between 0 and 1, got {rate!r}")
        for name in RATE_FIELDS:
            rate = getattr(self, name)
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}")
        total = sum(self.error_rates.values()) + sum(getattr(self, n) for n in RATE_FIELDS)
        if total > 1 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}, more than 1")
        if self.rate_limit_burst < 0:
            raise ValueError(f"rate_limit_burst must not be negative, got {self.rate_limit_burst}")
        _non_negative("retry_after_s", self.retry_after_s)
        _non_negative("hang_s", self.hang_s)


class EmulatorConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Everything ``router-agent emulate`` can be told, by ``--config FILE`` or flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    latency_ms: float = 40.0
    """Time to first token for models without their own ``ttft_ms``."""
    tokens_per_s: float = 0.0
    """Default generation pace (0: instant)."""
    jitter: float = 0.0
    seed: int | None = None
    """Seeds jitter and fault draws; unset, they differ from run to run."""
    models: dict[str, ModelProfile] = {}
    faults: dict[str, FaultSpec] = {}
    admin_token: str | None = None
    """When set, ``/admin/*`` needs ``Authorization: Bearer <token>`` (for code and tests)."""
    admin_token_env: str | None = None
    """The environment variable holding the admin token (for files: no secrets in YAML)."""

    def __post_init__(self) -> None:
        _non_negative("latency_ms", self.latency_ms)
        ModelProfile(self.latency_ms, self.tokens_per_s, self.jitter)  # same checks
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")

    def resolved_admin_token(self) -> str | None:
        """The admin token, read from ``admin_token_env`` when named there; unset is an error."""
        if self.admin_token is not None or self.admin_token_env is None:
            return self.admin_token
        token = os.environ.get(self.admin_token_env)
        if not token:
            raise ValueError(f"admin_token_env: environment variable {self.admin_token_env} is not set")
        return token

    @property
    def default_profile(self) -> ModelProfile:
        return ModelProfile(self.latency_ms, self.tokens_per_s, self.jitter)


def to_fault_spec(value: FaultSpec | int | Mapping[str, Any]) -> FaultSpec:
    """A fault spec from the short form (a bare status: every request fails with it) or a mapping."""
    if isinstance(value, FaultSpec):
        return value
    if isinstance(value, bool) or not isinstance(value, int | Mapping):
        raise ValueError(f"a fault must be a status or a mapping, got {value!r}")  # noqa: TRY004 (a config error)
    if isinstance(value, int):
        if not 400 <= value <= 599:
            raise ValueError(f"fault status must be 4xx or 5xx, got {value}")
        return FaultSpec(status=value)
    try:
        return msgspec.convert(dict(value), FaultSpec, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def config_from_mapping(data: Mapping[str, Any], source: str = "emulator config") -> EmulatorConfig:
    """Validate a mapping (a YAML document's); errors name the source and the key path."""
    data = dict(data)
    for section, kind in (("faults", FaultSpec), ("models", ModelProfile)):
        entries = data.get(section)
        if not isinstance(entries, Mapping):
            continue
        checked: dict[Any, Any] = {}
        for name, entry in entries.items():  # one by one, so an error names the model
            try:
                checked[name] = to_fault_spec(entry) if kind is FaultSpec else msgspec.convert(
                    entry, ModelProfile, strict=False)
            except (ValueError, msgspec.ValidationError) as exc:
                raise ValueError(f"{source}: {section}.{name}: {exc}") from None
        data[section] = checked
    try:
        return msgspec.convert(data, EmulatorConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> EmulatorConfig:
    """Read ``path`` (YAML); a missing file, bad YAML or a bad key fails here, naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top, got {type(data).__name__}")  # noqa: TRY004
    return config_from_mapping(data, str(path))
