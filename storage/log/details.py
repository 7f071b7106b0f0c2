"""data1.details: everything the SDKs sent with their events, beside data1, keyed by its offsets.

data1 holds only the ids that are counted. An SDK event carries much more (its own id, the
device and person, the device's clock, the screen, the experience's name and revision, an
identify's traits); the experience overview and any recount need all of it. It is kept here,
in a file of its own, the way data1.timeindex keeps data1's times.

Format
    A 32-byte header, then groups, one per request that brought new SDK events:

        header   b"MADETAIL"  magic
                 u32          version (1)
                 16 bytes     identity: random, new for each details file; the dedupe index
                              (storage/log/seen_index.py) names the file it was built from with it
                 u32          reserved, 0

        group    u32  length of the rest of the group, from data1_start on
                 u32  CRC-32 (zlib.crc32) of the rest of the group
                 u64  data1_start   the data1 bytes written with this group: the ids of its
                 u64  data1_end     screen views, and of any minimal items beside them
                 u32  CRC-32 of those data1 bytes (ties the group to this data1)
                 u64  received      receive time, Unix milliseconds (UTC)
                 ...  counted       optional: the events' counted columns, in
                                    storage/log/counted.py's format (they begin with a 2
                                    byte, or 1 or 0 in its formats before, which no JSON
                                    does), written by the ingest since 2026-12; sealed by
                                    a CRC of their own, of the group's head and themselves
                 ...  payload       JSON (UTF-8), one item per event, in either form:
                                    [item, ...], each item with its "event"; or an object,
                                    {"project": "shop", "items": [item, ...]}, with the
                                    request's project (storage/projects.py; absent for the
                                    default project), and, when the request's body was all
                                    new events, the body itself, the items then without
                                    "event", item i describing batch element i (no need to
                                    encode the events again):
                                    {"sent": {"batch": [event, ...]}, "items": [item, ...]}

        item     {"event": the event as sent,
                  "time": the device's time (Unix ms), or the receive time where "clock"
                          says it was not believed,
                  "clock": why not ("missing", "unparsable", "ahead", "before 2000");
                           absent when believed,
                  "offset": the data1 offset of a screen view's id}

    All integers are little-endian. An event's id is inside "event" ("id"). Group.events()
    reads both forms into the project and [item, ...].

Invariants
    * The ingest appends a group under data1's write lock, and writes the data1 bytes it
      describes only once the group is durable (storage/log/writer.py): so data1's bytes
      are never on disk without their details, whatever a power loss keeps. A request
      whose events are all duplicates writes nothing here.
    * Opening repairs what a crash left (DetailsWriter._repair), from the first group that
      data1 does not hold on:
      - a torn or corrupt group, and every group after it, is removed (never acknowledged:
        a group is durable before anything it describes is written);
      - a group whose data1 bytes are missing was never acknowledged either: it and every
        group after it are removed, and data1 is cut back to where its bytes began
        (DetailsWriter.data1_kept). Its events are then new to the dedupe index, so a
        resend is stored once. So is a group whose data1 bytes are torn: NULs where a power
        loss lost pages of their write (storage/log/format.py's invariants). data1 is cut,
        and the cut made durable, before the groups are (DetailsWriter.remove_unheld): a
        power loss between the two cuts leaves groups whose data1 bytes are lost, removed
        again at the next opening. The other order could leave data1 bytes whose group is
        gone: they would read as minimal events, counted with no details for a resend's
        dedupe to find;
      - so is a group right after NULs in data1's bytes that no group describes (a minimal
        event's record, on a page the power loss lost): written after a lost page, it was
        never synced. data1 is cut where the NULs begin. Kept, the NULs would run into its
        first record, a token the worker skips, while its events stayed in the dedupe
        index: a resend answered as a duplicate of an event never counted. NULs followed
        by a separator harm no record and stay: what follows them may have been
        acknowledged since;
      - a group whose data1 bytes are whole but different means data1 is another file
        (replaced, or restored from elsewhere): only then is this file set aside and a new
        one begun. A power loss never leaves different bytes, only lost ones: NULs, or a
        shorter file.
      Only the groups describing data1's last MAX_UNSYNCED bytes can have lost theirs; of
      the groups before them, the last is checked, to tell another data1.
    * A missing file is begun anew: events already in data1 then have no details. That
      never changes what is counted, only what is known of those events.
    * A reader checks what it reads: read_groups a group's CRC, of all of it; the
      overview's catch-up (read_stretch), which reads only a group's head and counted
      columns, their own CRC when they are sealed, else the group's. A power loss cannot
      make the two disagree on what is counted: a group is durable before its data1 bytes
      are written, so one it damaged describes data1 bytes never written, past the
      data1_end up to which the catch-up reads. Damage from elsewhere to a group's JSON
      alone lets the catch-up count its columns, whole by their CRC, and ends read_groups'
      reading there (and the file, at the ingest's next opening, as any damage does).
"""

import json
import logging
import os
import struct
import zlib
from typing import Optional, Union

import msgspec

from storage.durable import append_whole, truncate_or_die
from storage.log import counted
from storage.log.format import MAX_UNSYNCED

log = logging.getLogger("ingest")

MAGIC = b"MADETAIL"
VERSION = 1
HEADER = struct.Struct("<8sI16sI")
FRAME = struct.Struct("<II")  # length, crc
GROUP = struct.Struct("<QQIQ")  # data1_start, data1_end, data1_crc, received
MAX_GROUP = 64 * 1024 * 1024  # a length beyond this is damage, not a group
FIRST_READ, READ_AHEAD = 16 * 1024, 1024 * 1024  # read_groups' chunks
_ITEM_ENCODER = msgspec.json.Encoder()


class Group:
    __slots__ = ("data1_start", "data1_end", "data1_crc", "received_ms", "stored", "end")

    def __init__(self, data1_start, data1_end, data1_crc, received_ms, stored, end):
        self.data1_start = data1_start
        self.data1_end = data1_end
        self.data1_crc = data1_crc
        self.received_ms = received_ms
        self.stored = stored  # what follows the header: the counted columns if any, the JSON
        self.end = end  # this file's offset just past the group

    @property
    def head(self):
        """The group's head as written (its fields from data1_start to received)."""
        return GROUP.pack(self.data1_start, self.data1_end, self.data1_crc, self.received_ms)

    @property
    def payload(self):
        """The JSON (bytes), without the counted columns."""
        json_at = counted.length(self.stored)
        return self.stored[json_at:] if json_at else self.stored

    @property
    def columns(self):
        """The counted columns' section (storage/log/counted.py), bytes, or None."""
        json_at = counted.length(self.stored)
        return self.stored[:json_at] if json_at else None

    def events(self):
        """(project, items): the group's project ("" the default) and items, each with its
        "event"."""
        return payload_events(self.payload)

    def events_as(self, event_type):
        """payload_events_as(self.payload, event_type)."""
        return payload_events_as(self.payload, event_type)


def payload_events(payload):
    """(project, items) of a group's payload (either form of the format): its project (""
    the default) and items, each with its "event". A cluster's SDK message carries the same
    payload (storage/stream/sdk_message.py)."""
    payload = json.loads(payload)
    if type(payload) is list:
        return "", payload
    project = payload.get("project", "")
    if "sent" not in payload:
        return project, payload["items"]
    return project, [{"event": event, **item}
                     for event, item in zip(payload["sent"]["batch"], payload["items"])]


def payload_events_as(payload, event_type):
    """(project, [(event, time), ...]) of a group's payload, each event decoded as
    `event_type`, a msgspec.Struct of the fields the caller reads (the rest is skipped, not
    decoded: a few times the speed of payload_events()). Raises msgspec.MsgspecError, or
    ValueError, for a payload that does not fit: payload_events() then reads it, whatever it
    holds."""
    payload = _decoder(event_type).decode(payload)
    if type(payload) is list:
        return "", [(item.event, item.time) for item in payload]
    if payload.sent is None:
        if any(item.event is None for item in payload.items):
            raise ValueError("an item without its event")
        return payload.project, [(item.event, item.time) for item in payload.items]
    if len(payload.sent.batch) != len(payload.items):
        raise ValueError("a sent batch and items of different lengths")
    return payload.project, [(event, item.time)
                             for event, item in zip(payload.sent.batch, payload.items)]


_DECODERS = {}


def _decoder(event_type):
    """A decoder of either form of a group's payload (see the format), events as
    `event_type`."""
    decoder = _DECODERS.get(event_type)
    if decoder is None:
        item = _item_type(event_type)
        either = msgspec.defstruct("EitherItem", [("time", int),
                                                  ("event", Optional[event_type], None)])
        sent = msgspec.defstruct("Sent", [("batch", list[event_type])])
        whole = msgspec.defstruct("ObjectGroup", [("items", list[either]),
                                                  ("project", str, ""),
                                                  ("sent", Optional[sent], None)])
        decoder = _DECODERS[event_type] = msgspec.json.Decoder(Union[list[item], whole])
    return decoder


def _item_type(event_type):
    # "project": a cluster message's item names its project (storage/stream/writer.py);
    # a group names its own, not each item's.
    return msgspec.defstruct("Item", [("event", event_type), ("time", int),
                                      ("project", str, "")])


def item_decoder(event_type):
    """A decoder of one item in JSON, as a cluster message's details header carries it
    (storage/stream/writer.py): decode(json) -> an item with .event (as `event_type`),
    .time and .project ("" when absent). Raises as events_as does."""
    key = ("item", event_type)
    decoder = _DECODERS.get(key)
    if decoder is None:
        decoder = _DECODERS[key] = msgspec.json.Decoder(_item_type(event_type))
    return decoder


def encode_group(data1_start, data1_end, data1_crc, received_ms, items, sent=None, project="",
                 columns=b""):
    """One group of `project`'s events, ready to append. `items` as the format says, each
    with its "event"; or, with `sent` (the request body, whose batch is exactly the items'
    events, in order), without it: the body is kept as it came. `columns`: the events'
    counted columns (counted.encode), or b"" for none."""
    head = GROUP.pack(data1_start, data1_end, data1_crc, received_ms)
    if columns:  # its own CRC covers this head too (storage/log/counted.py)
        columns = counted.seal(columns, head)
    body = head + columns + encode_payload(items, sent, project)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_payload(items, sent=None, project="", events=None):
    """A group's payload (see the format) of `project`'s `items`, or of `sent` and its items
    (as encode_group takes them). With `events` (each item's event in JSON, bytes, as it
    came), the items are without their "event", and get it as it came: the items' form, with
    no event decoded and encoded again."""
    if events is not None:  # always the object form: a cluster message names its project
        items_json = b"[%s]" % b",".join(
            b'{"event":%s,%s' % (event, _ITEM_ENCODER.encode(item)[1:])
            for event, item in zip(events, items))
    elif sent is not None:
        # Beside the body, the items hold only numbers and ASCII words: msgspec writes them
        # as json would, in a tenth of the time (about 40 µs a request of 100 events).
        items_json = _ITEM_ENCODER.encode(items)
    else:
        # Without the body, the items hold the events: as they came, not \u-escaped.
        items_json = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
        if not project:
            return items_json
    parts = [b'"project":"%s"' % project.encode("ascii")] if project else []
    if sent is not None:
        parts.append(b'"sent":%s' % sent)
    return b"{%s}" % b",".join([*parts, b'"items":%s' % items_json])


def read_header(fd):
    """The file's identity, or None if it has no valid header."""
    raw = os.pread(fd, HEADER.size, 0)
    if len(raw) < HEADER.size:
        return None
    magic, version, identity, _ = HEADER.unpack(raw)
    return identity if magic == MAGIC and version == VERSION else None


def read_groups(fd, start=HEADER.size, received_after_ms=None):
    """Yield the complete, intact groups from `start` on; stop at the first that is not.

    With `received_after_ms`, groups received earlier are skipped without decoding their
    payload (they are framed and checked all the same)."""
    unpack_group, crc32 = GROUP.unpack_from, zlib.crc32
    for buffer, base, framed in _framed(fd, start):
        for at, end, crc in framed:
            body = buffer[at:end]  # a copy checks faster than a memoryview
            if crc32(body) != crc:
                return
            data1_start, data1_end, data1_crc, received_ms = unpack_group(body)
            if received_after_ms is not None and received_ms < received_after_ms:
                continue
            yield Group(data1_start, data1_end, data1_crc, received_ms, body[GROUP.size:],
                        base + end)


class Stretch:
    """What read_stretch read of a stretch of groups."""

    __slots__ = ("events", "group", "end", "data1_end", "ended")

    def __init__(self, events, group, end, data1_end, ended):
        self.events = events  # the rows of the sections read
        self.group = group  # None, or the last group read, to be read whole (checked whole)
        self.end = end  # the offset just past the last group read (the start if none)
        self.data1_end = data1_end  # that group's data1_end (None if none)
        self.ended = ended  # whether nothing more can be read now (see read_stretch)


def read_stretch(fd, start, data1_end, events, texts, sections):
    """The overview's catch-up reading of the groups from `start` on whose data1 bytes end at
    or before `data1_end`: each group's counted.Section, appended to `sections`, until they
    hold `events` rows or more, or a group has no section of this format to count. Returns
    a Stretch:
        events            the rows of the sections read;
        group             the group that ended the stretch, if it has no such section, or
                          one that does not read, or whose texts `texts` refuses: it is to
                          be read as a whole (SdkEvents.read_group);
        end, data1_end    where the last group read ends, in this file and in data1;
        ended             True if it stopped at what cannot be read yet: the file's end, a
                          group that is not intact, or one whose data1 bytes end past
                          `data1_end`.
    `texts`: {a section's texts as JSON (bytes): their list, or None to read the group as a
    whole}, a dict whose __missing__ decodes and judges them (each request lists the same
    screens and names: a commit decodes each list once).

    A group whose section is sealed (counted.MARK) is checked by the section's CRC, which
    covers the group's head and the section: all that is read of it. Its JSON, most of its
    bytes, is neither copied nor checked. Any other group, and one left to be read whole,
    is checked whole, as read_groups checks it. A section is read as counted.read reads one, but in this loop rather than in
    calls: the catch-up reads hundreds of thousands of groups of a few events, and a
    group's calls (its Group, its section, the rule's checks) were half of its reading
    (docs/benchmarks.md)."""
    counted_rows, last_end, last_data1_end, add = 0, start, None, sections.append
    unpack_group, unpack_head, unpack_seal = (GROUP.unpack_from, counted.HEAD.unpack_from,
                                              counted.SEAL.unpack_from)
    crc32, row_size, seal_size = zlib.crc32, counted.ROW.size, counted.SEAL.size
    head_size, rows_after = counted.HEAD.size, GROUP.size + counted.HEAD.size
    sealed, json_starts, section = counted.MARK, counted.JSON_STARTS, counted.Section
    for buffer, base, framed in _framed(fd, start):
        for at, end, crc in framed:
            if counted_rows >= events:
                return Stretch(counted_rows, None, last_end, last_data1_end, False)
            head_at, rows_at = at + GROUP.size, at + rows_after
            if end - head_at >= head_size:
                mark, rows, rest = unpack_head(buffer, head_at)
                texts_at, seal_at = rows_at + rows * row_size, rows_at + rest - seal_size
                # The section read: its lengths add up, its JSON follows it, its CRC matches.
                read = (mark == sealed and texts_at <= seal_at and seal_at + seal_size < end
                        and buffer[seal_at + seal_size] in json_starts
                        and crc32(buffer[at:seal_at]) == unpack_seal(buffer, seal_at)[0])
            else:  # shorter than a section's head: JSON alone
                read = False
            if not read and crc32(buffer[at:end]) != crc:
                return Stretch(counted_rows, None, last_end, last_data1_end, True)
            data1_start, group_data1_end, data1_crc, received_ms = unpack_group(buffer, at)
            if group_data1_end > data1_end:
                return Stretch(counted_rows, None, last_end, last_data1_end, True)
            if read:
                listed = texts[buffer[texts_at:seal_at]]
                if listed:
                    add(section((buffer[rows_at:texts_at], rows, listed)))
                    counted_rows += rows
                    last_end, last_data1_end = base + end, group_data1_end
                    continue
                if crc32(buffer[at:end]) != crc:  # to be read whole: checked whole
                    return Stretch(counted_rows, None, last_end, last_data1_end, True)
            last_end, last_data1_end = base + end, group_data1_end
            group = Group(data1_start, group_data1_end, data1_crc, received_ms,
                          buffer[head_at:end], last_end)
            return Stretch(counted_rows, group, last_end, last_data1_end, False)
    return Stretch(counted_rows, None, last_end, last_data1_end, True)


def _framed(fd, start):
    """Yield, a read of the file at a time, the complete groups it brought, from `start` on,
    as (buffer, base, [(at, end, crc), ...]): the group's bytes from data1_start on are
    buffer[at:end], its CRC `crc` (the caller checks it), and `base + end` is this file's
    offset just past it. Stop at a length no group has."""
    # Read in chunks growing to READ_AHEAD, not two reads a group: a group's reading is most
    # of the overview's catch-up (docs/benchmarks.md), 1.45 -> 1.19 µs an event this way.
    # `buffer[at:]` is the file from `offset` on, as far as read.
    offset, buffer, at, chunk, wanted = start, b"", 0, FIRST_READ, FRAME.size
    unpack_frame = FRAME.unpack_from
    while True:
        buffer, at = _read_on(fd, buffer, at, offset, wanted, chunk)
        if len(buffer) < wanted:
            return  # the file ends before the next group does
        base, framed = offset, []
        while len(buffer) - at >= FRAME.size:
            length, crc = unpack_frame(buffer, at)
            if length < GROUP.size or length > MAX_GROUP:
                yield buffer, base, framed
                return
            end = at + FRAME.size + length
            if end > len(buffer):
                break
            framed.append((at + FRAME.size, end, crc))
            offset += FRAME.size + length
            at = end
        wanted = FRAME.size if len(buffer) - at < FRAME.size else FRAME.size + length
        if chunk < READ_AHEAD:
            chunk *= 2
        yield buffer, base, framed


def _read_on(fd, buffer, at, offset, wanted, chunk):
    """(buffer, 0): `buffer[at:]` (the file from `offset` on) and what follows it in the
    file: at least `wanted` bytes in all if the file has them, and a read of at least
    `chunk` bytes."""
    kept = buffer[at:]
    return kept + os.pread(fd, max(chunk, wanted - len(kept)), offset + len(kept)), 0


def received_at_or_after(path, offset):
    """When the ingest received the first group of the details file at `path` at or after
    `offset` (milliseconds since the epoch), or None if the file has no group there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for group in read_groups(fd, max(offset, HEADER.size)):
            return group.received_ms
        return None
    finally:
        os.close(fd)


class _Place:
    """Where a group is, in this file and in data1."""

    __slots__ = ("data1_start", "data1_end", "data1_crc", "end")

    def __init__(self, group):
        self.data1_start, self.data1_end = group.data1_start, group.data1_end
        self.data1_crc, self.end = group.data1_crc, group.end


def _nuls_before(data1_fd, start, end):
    """Where the NULs that run up to data1 offset `end` begin (not before `start`), or None
    if the byte before `end` is not a NUL."""
    if end <= start:
        return None
    gap = os.pread(data1_fd, end - start, start)
    return start + len(gap.rstrip(b"\0")) if gap.endswith(b"\0") else None


def _data1_bytes(data1_fd, group):
    """What data1 holds where the group's bytes were written, and whether it is them."""
    written = os.pread(data1_fd, group.data1_end - group.data1_start, group.data1_start)
    return written, zlib.crc32(written) == group.data1_crc


class DetailsWriter:
    """The ingest's side. Opening it repairs the file against data1 (see the invariants)."""

    def __init__(self, path, data1_fd, data1_size, set_aside):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.identity = read_header(self.fd)
        if self.identity is None and os.fstat(self.fd).st_size:
            self._begin_anew(set_aside, "its header is not a details header")
        if self.identity is None:
            self._write_header(data1_size)
        self.end = self._repair(data1_fd, data1_size, set_aside)
        self.appended = 0

    def remove_unheld(self):
        """Remove the groups that opening found data1 does not hold (see the invariants), once
        data1 is cut back to data1_kept and the cut is durable."""
        size = os.fstat(self.fd).st_size
        if self.end < size:
            log.warning("data1.details: removing %d bytes at offset %d (%s; never "
                        "acknowledged)", size - self.end, self.end, self._unheld)
            os.ftruncate(self.fd, self.end)
            os.fsync(self.fd)

    def _write_header(self, data1_size):
        self.identity = os.urandom(16)
        # Whole or not at all: a header cut short would read as no header at the next opening.
        append_whole(self.fd, HEADER.pack(MAGIC, VERSION, self.identity, 0), 0,
                     "data1.details", log)
        os.fsync(self.fd)
        if data1_size:
            log.warning("data1.details: begun anew; the events already in data1 (%d bytes) "
                        "have no details (they stay counted)", data1_size)

    def _begin_anew(self, set_aside, why):
        aside = set_aside(self.path)
        log.error("data1.details: %s; kept aside as %s, and a new one begun", why, aside.name)
        os.close(self.fd)
        os.rename(self.path, aside)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.identity = None

    def _repair(self, data1_fd, data1_size, set_aside):
        """Find the last group that data1 holds whole (see the invariants); return the end
        this file is to be cut to (by remove_unheld). Sets data1_kept: how much of data1 the
        groups kept allow."""
        self.data1_kept = data1_size
        self._unheld = None  # why the groups from `keep` on are to be removed
        checked_from = data1_size - MAX_UNSYNCED
        keep, trusted, recent = HEADER.size, None, []
        for group in read_groups(self.fd):
            if group.data1_end <= checked_from:
                keep, trusted = group.end, _Place(group)
            else:  # only their places: their payloads could be large
                recent.append(_Place(group))
        if trusted and not _data1_bytes(data1_fd, trusted)[1]:
            return self._another_data1(set_aside, data1_size)
        lost = None
        # Where the data1 bytes no group describes begin (minimal events'), in the window.
        between = max(trusted.data1_end if trusted else 0, checked_from)
        for group in recent:
            if group.data1_end > data1_size:
                lost = "their data1 bytes were lost"
                self.data1_kept = min(group.data1_start, data1_size)
                break
            # A page lost just before the group's bytes (NULs where other records were
            # written, running into its first record: a token the worker skips): the
            # group was written after the lost page, so never synced, never acknowledged.
            # Kept, its events would be duplicates of an event never counted. (NULs with a
            # separator after them harm no record, and are left, as the format says: the
            # records after them may be acknowledged ones, appended since.)
            lost_before = _nuls_before(data1_fd, between, group.data1_start)
            if lost_before is not None:
                lost = "data1 lost bytes written before theirs"
                self.data1_kept = lost_before
                break
            written, held = _data1_bytes(data1_fd, group)
            if not held:
                if b"\0" not in written:
                    return self._another_data1(set_aside, data1_size)
                lost = "their data1 bytes are torn"
                self.data1_kept = group.data1_start
                break
            keep = group.end
            between = group.data1_end
        self._unheld = f"groups from there on: {lost}" if lost else "a torn group"
        return keep

    def _another_data1(self, set_aside, data1_size):
        self._begin_anew(set_aside, "a group describes other bytes than data1 holds there "
                                    "(data1 is another file)")
        self._write_header(data1_size)
        return HEADER.size

    def append(self, group):
        """Append one encoded group (encode_group) in one write; undone if it fails."""
        append_whole(self.fd, group, self.end, "data1.details", log)
        self.end += len(group)
        # Bytes appended since opening, never lowered by take_back: a sync that saw this
        # count knows whether anything was written since (the end alone can come back to
        # where a sync saw it, with other bytes).
        self.appended += len(group)

    def take_back(self, size):
        """Remove the last `size` bytes appended (the rest of their append failed, before
        any of its data1 bytes was written)."""
        self.end -= size
        truncate_or_die(self.fd, self.end, "data1.details", log)

    def sync(self):
        os.fdatasync(self.fd)

    def close(self):
        os.close(self.fd)
