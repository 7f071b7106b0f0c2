"""The SDKs' events (Judo's iOS and Android SDKs; bench/sdk_shapes.py has them field by
field) as msgspec structs of the fields the engine reads, and no more: the decoder skips the
rest of an event, which is kept as it came. One shape, read two ways: the ingest checks
what it takes (app/validate.py), the worker counts what is kept (worker/sdk_events.py).

A body or a stored event that does not fit (a field of another type) raises in msgspec's
decoder; both readers then read it the step by step way, which names or sets aside what it
cannot use.
"""

from typing import Any, Optional

import msgspec


class Properties(msgspec.Struct):
    """A screen view's properties."""
    experienceID: Any = None  # a decimal string as the SDKs send it; checked by the reader
    id: Optional[str] = None
    name: Optional[str] = None
    experienceName: Optional[str] = None
    experienceRevisionID: Optional[str] = None


class CheckedEvent(msgspec.Struct):
    """What the ingest checks of an event ("" for a missing id: refused)."""
    id: str = ""
    anonymousID: str = ""
    type: str = ""
    userID: Optional[str] = None
    timestamp: Any = None
    properties: Optional[Properties] = None
    # Only whether they are objects matters: kept as their JSON, never decoded.
    context: msgspec.Raw = msgspec.Raw(b"null")
    traits: msgspec.Raw = msgspec.Raw(b"null")


class CountedEvent(msgspec.Struct):
    """What the overview counts of a kept event."""
    anonymousID: str
    type: Any = None
    userID: Optional[str] = None
    properties: Optional[Properties] = None
