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
from signals.subjects import QUEUE_GROUP, Subjects, token, untoken
from signals.types import *

__all__ = [
    "QUEUE_GROUP",
    "CloudEvent",
    "EventFactory",
    "SignalError",
    "Subjects",
    "decode_data",
    "decode_event",
    "encode_event",
    "event_type",
    "token",
    "untoken",
]
__all__ += types.__all__
