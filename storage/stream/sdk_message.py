"""An SDK message: a request's SDK events of one partition, as the stream keeps them (cluster
mode). Its format, written down once: storage/stream/writer.py encodes, storage/stream/reader.py
decodes, and the worker dedupes and counts (worker/stream_runner.py).

Format
    subject   mini_analytics.events.<partition>: the partition the events' anonymousID picks
              (storage/stream/writer.partition_of)
    payload   the events' details: a data1.details group's payload (storage/log/details.py's
              format, either form: the items, or the request's body as it came beside them),
              the events in the request's order; deflated (zlib's format, RFC 1950) when
              Mini-Analytics-Encoding says so
    headers   Mini-Analytics-Keys      base64 of the events' keys, 16 bytes each, in the same
                                       order (storage/backend.event_key: the project's key of
                                       the event's id)
              Mini-Analytics-Ids       one token per event, separated by spaces, in the same
                                       order: its screen view's record (data1's token, "7", or
                                       "shop:7" in a named project), or "-" for an event that
                                       counts no experience (an identify, a register)
              Mini-Analytics-Window    the dedupe window, in whole seconds, of the ingest node
                                       that wrote it (0: off): how long before this message
                                       one of its keys makes its event a repeat
              Mini-Analytics-Received  when the ingest node received the request, Unix ms
              Mini-Analytics-Encoding  "zlib": the payload is deflated; absent (messages
                                       written before it): the payload as it is
              Mini-Analytics-Columns   base64 of the events' counted columns
                                       (storage/log/counted.py's section, a row an event
                                       in the same order), deflated; absent (messages
                                       written before it, or events naming too many
                                       texts): the overview decodes the payload
              Nats-Msg-Id              "sdk-" and the hex BLAKE2b of the keys: an exact retry
                                       of the message is stored once (the stream's duplicate
                                       window)

    An older format is still read: one message per SDK event, its payload the screen view's
    record (or empty), its details item (with "received", and "project" when named) in the
    header Mini-Analytics-Details. The stream deduped those by their message ids alone, so
    each was new when stored: read as this format with a window of 0.

    A message of minimal events has neither headers nor details: its payload is data1's
    records (storage/log/format.py).

Invariants
    * Keys, ids and items are in one order and of one length: event i's key is keys[i], its
      record ids[i], its details the payload's item i. A message that breaks this is not an
      SDK message the ingest wrote: decode() raises ValueError (and SdkPart.details(), for a
      payload that does not inflate whole).
    * What is counted needs only the headers; the payload is inflated only when its details
      are read (the overview, for a message without columns), so a recount of the counts
      never pays for it.
    * The columns are a header, not a part of the payload: a worker of an earlier version
      ignores them and reads the payload, so the ingest nodes may be upgraded before the
      workers. A worker that cannot read them (they do not inflate, or do not read as a
      section of as many rows as keys) reads the payload instead.
    * An event may repeat one in an earlier message (a retry of it in another request, whose
      message has other keys, so another id). Which events of a message are repeats is a
      function of the stream alone (worker/stream_runner.py applies the rule,
      storage/views/seen_store.py keeps its state): every worker finds the same ones.
"""

import base64
import hashlib
import json
import zlib

from storage.backend import event_key
from storage.log import counted
from storage.log.details import MAX_GROUP, encode_payload
from storage.stream.names import (COLUMNS_HEADER, DETAILS_HEADER, ENCODING_HEADER, IDS_HEADER,
                                  KEYS_HEADER, RECEIVED_HEADER, WINDOW_HEADER)

KEY_SIZE = 16
NO_RECORD = b"-"
# Past this, a window is not one an ingest node could have had (settings.dedupe_window).
MAX_WINDOW = 30 * 24 * 3600
# Why deflate: each byte of a message is stored, replicated and kept in cache by every
# JetStream server (measured here, three servers: about 130 µs of their CPU a message and
# 15 µs a KB), and an install's batch repeats its fields from event to event (real-shaped
# batches of 50 deflate about 9 times at level 1, for about 2.7 µs of the ingest's CPU an
# event). Level 1: the higher levels take several times the CPU for a few percent more.
ENCODING = "zlib"
LEVEL = 1


class SdkPart:
    """The SDK events of a message: `keys` (16 bytes each), `tokens` (each event's record
    token, or NO_RECORD), `window` (seconds), the `payload` as stored (its details are
    details()) and the `columns` header if any (read by section()); or, in the older
    format, one event whose key is read from its details item when first asked for."""

    __slots__ = ("_keys", "tokens", "window", "payload", "deflated", "legacy_item", "columns")

    def __init__(self, keys, tokens, window, payload, legacy_item=None, deflated=False,
                 columns=None):
        self._keys = keys
        self.tokens = tokens
        self.window = window
        self.payload = payload  # bytes as stored; None in the older format
        self.deflated = deflated  # whether the payload is deflated (ENCODING)
        self.legacy_item = legacy_item  # str: the older format's details item (JSON)
        self.columns = columns  # str: the Mini-Analytics-Columns header, or None

    def details(self):
        """The details group's payload (storage/log/details.py's format), inflated if it is
        stored deflated. Raises ValueError for a payload that does not inflate whole, or
        inflates past details.MAX_GROUP (no group the ingest writes is that large)."""
        return _inflated(self.payload, "the payload") if self.deflated else self.payload

    def section(self, known=None):
        """The events' counted columns (storage/log/counted.Section), or None if the message
        has none, or none that reads as a row for each of its events. `known`: as
        counted.read takes it."""
        if self.columns is None:
            return None
        try:
            section = counted.read(_inflated(
                base64.b64decode(self.columns, validate=True), "the columns"), alone=True,
                known=known)
        except ValueError:  # binascii.Error is one
            return None
        return section if section is not None and section.count == len(self.tokens) else None

    @property
    def keys(self):
        if self._keys is None:  # the older format: the key is the item's
            item = json.loads(self.legacy_item)
            self._keys = [event_key(item["event"]["id"], item.get("project", ""))]
        return self._keys

    def records(self, dropped=()):
        """data1's records of the screen views, but for the events at the indexes in
        `dropped`."""
        return b"".join(token + b" " for index, token in enumerate(self.tokens)
                        if token != NO_RECORD and index not in dropped)


def _inflated(deflated, what):
    """`deflated` (zlib's format) inflated. Raises ValueError naming `what` for bytes that do
    not inflate whole, or inflate past details.MAX_GROUP (no group the ingest writes is that
    large)."""
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(deflated, MAX_GROUP)
    except zlib.error as error:
        raise ValueError(f"{what} does not inflate: {error}") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ValueError(f"{what} is cut short, or holds more than one stream, or "
                         f"inflates past {MAX_GROUP} bytes")
    return inflated


def message_id(keys):
    return "sdk-" + hashlib.blake2b(b"".join(keys), digest_size=16).hexdigest()


def encode_message(events, keys, received_ms, project, window, sent=None):
    """(payload, headers) of the message holding SdkEvents `events` (app/validate.py) of
    `project`, whose keys are `keys`. With `sent` (the request's body, whose batch is exactly
    these events), the payload keeps it as it came. The headers carry the events' counted
    columns (storage/log/counted.py), unless they name more texts than a section holds."""
    prefix = f"{project}:" if project else ""
    ids = " ".join(NO_RECORD.decode() if event.experience_id is None
                   else f"{prefix}{event.experience_id}" for event in events)
    items = [event.item for event in events]
    payload = (encode_payload(items, sent, project) if sent is not None else
               encode_payload(items, project=project,
                              events=[event.event_json for event in events]))
    headers = {
        "Nats-Msg-Id": message_id(keys),
        KEYS_HEADER: base64.b64encode(b"".join(keys)).decode("ascii"),
        IDS_HEADER: ids,
        WINDOW_HEADER: str(window),
        RECEIVED_HEADER: str(received_ms),
        ENCODING_HEADER: ENCODING,
    }
    columns = counted.encode(project, events)
    if columns:
        headers[COLUMNS_HEADER] = base64.b64encode(zlib.compress(columns, LEVEL)).decode("ascii")
    return zlib.compress(payload, LEVEL), headers


def decode(payload, headers):
    """(records, SdkPart or None) of a message's `payload` and `headers` (a dict, or None):
    its records of minimal events (b"" for an SDK message), and its SDK events. Raises
    ValueError for a message that breaks the format's invariants."""
    if not headers:
        return payload, None
    if KEYS_HEADER in headers:
        raw = base64.b64decode(headers[KEYS_HEADER], validate=True)
        tokens = headers[IDS_HEADER].encode("ascii").split(b" ") if headers[IDS_HEADER] else []
        window = int(headers[WINDOW_HEADER])
        if len(raw) != KEY_SIZE * len(tokens) or not 0 <= window <= MAX_WINDOW:
            raise ValueError(f"{len(raw)} bytes of keys for {len(tokens)} ids, window "
                             f"{window}")
        encoding = headers.get(ENCODING_HEADER)
        if encoding not in (None, ENCODING):
            raise ValueError(f"a payload encoded as {encoding!r}")
        keys = [raw[start:start + KEY_SIZE] for start in range(0, len(raw), KEY_SIZE)]
        return b"", SdkPart(keys, tokens, window, payload, deflated=encoding == ENCODING,
                            columns=headers.get(COLUMNS_HEADER))
    if DETAILS_HEADER in headers:
        tokens = payload.split() or [NO_RECORD]
        if len(tokens) != 1:
            raise ValueError(f"{len(tokens)} records in one event's message")
        return b"", SdkPart(None, tokens, 0, None, headers[DETAILS_HEADER])
    return payload, None
