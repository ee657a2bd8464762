"""The wire contract of the LLM router: typed signals, the envelope and the subjects.

Import this package to talk to the router without importing the router itself::

    from signals import LlmRequest, ChatMessage, Subjects, encode_event, decode_data
"""

from signals.envelope import (
    CloudEvent,
    EventFactory,
    SignalError,
    decode_data,
    decode_event,
    encode_event,
    event_type,
)
from signals.subjects import QUEUE_GROUP, Subjects, token
from signals.types import *  # noqa: F403 - the types are the public surface
from signals.types import __all__ as _types_all

__all__ = [
    "CloudEvent",
    "EventFactory",
    "SignalError",
    "decode_data",
    "decode_event",
    "encode_event",
    "event_type",
    "QUEUE_GROUP",
    "Subjects",
    "token",
    *_types_all,
]
