"""The counted columns: what the overview counts of a request's SDK events, written by the
ingest at the head of their data1.details group (storage/log/details.py), or in cluster
mode in a header of their SDK message (storage/stream/sdk_message.py), so that the worker
counts them without decoding the events (worker/sdk_events.py, worker/columns.py). Written
down once here: the ingest encodes (encode) and seals it in its group (seal),
storage/log/details.py finds where a group's section ends (length), the worker reads it
(read; in data1.details, storage/log/details.read_stretch reads it in the same way).

Why: decoding an SDK event's JSON again was half of what the overview's catch-up spent on it,
and the rule that picks its counted fields another third. The ingest has checked and
decoded the request anyway; it writes those fields as a few integers an event, with the
request's texts once (docs/benchmarks.md: 2 to 3 µs of the ingest an event, and the
catch-up about twice as fast). It writes the keys of its install and user too, hashed once
where the request arrives, so that the texts left are its screens' and names': requests
list the same ones again and again, and the worker decodes each list once a commit.

Format (integers little-endian)
    section   u8   2, a mark: no JSON text begins with it (1 and 0 mark the formats before)
              u32  rows: one an event, in the order of the group's items (row i is item i)
              u32  length of the rest of the section, its CRC included
              rows, ROW each:
                  i64  time: the item's "time", Unix milliseconds
                  i64  the experienceID of a screen view; -1 for an event that is not one
                  i64  the key of its install: storage/views/sketches.project_person_key
                       (project, "anon:", anonymousID)
                  i64  the key of its user, the same of ("user:", userID); 0: none
                       (absent, null or "")
                  u16  screen (properties.id)                each an index in texts;
                  u16  revision (properties.experienceRevisionID)    0: none
                  u16  experience name (properties.experienceName)
                  u16  screen name (properties.name)
              texts  a JSON array of strings: texts[0] the group's project ("" the
                     default), then each text the rows name, once, in the order first named
              u32    CRC-32 (zlib.crc32) of all that comes before it in its container: in
                     a data1.details group, the group's head (from data1_start on) and the
                     section; in an SDK message's header, the section alone (seal())

    Why a CRC of its own: the group's CRC covers its JSON too, eight times the section's
    bytes, which the overview's catch-up does not read. With the section's own, the
    catch-up checks what it reads, the group's head with it, and no more
    (docs/benchmarks.md).

    The format before (mark 1, 2026-12-07 to 2026-12-08) was this one without the CRC: it
    is read, its group checked whole. The first format (mark 0, until 2026-12-07) had the
    same head, rows of an index each for the install and the user in place of their keys,
    and their texts among the others: found, not read.

Invariants
    * A section is written by the ingest from the very events the group's JSON holds, in
      the same transaction of the group (one write, the group's CRC over it all and the
      section's over its head and itself), or in the same message: the JSON stays the
      record of what was sent, the section is what the overview reads.
    * The keys are the ones the worker's rule makes of the events themselves
      (worker/sdk_events.py): the overview counted from the sections is the one counted from
      the events (tests/test_counted_columns.py).
    * A reader that cannot use a section (its lengths do not add up, its CRC does not
      match, its texts are not an array of strings) reads the group's JSON instead, once
      the group's own CRC says it is whole. A row that breaks the format (an
      index past texts, a time or experienceID out of range) is set aside by the worker, as
      an event the rule cannot count is.
    * A request naming more than MAX_TEXTS distinct texts gets no section: its JSON is read.
      So is every group, and every SDK message, written before the ingest wrote sections,
      and every one of the first format: the events are the record, read once more.
    * A section whose CRC matches is whole, and so is the group's head before it: a reader
      that reads only these (storage/log/details.read_stretch) need not check the rest.
    * A worker of a version before this format does not know its mark: in data1.details it
      cannot find the JSON after such a section, and sets the group aside (the counts, from
      data1, are whole; the overview misses those events until `python -m worker rebuild`
      counts it again with a version that reads them). In cluster mode the section rides
      in a header apart from the payload: an earlier worker reads the payload instead.
"""

import collections
import itertools
import operator
import struct
import zlib

import msgspec

from storage.views.sketches import project_person_key

MARK = 2
UNSEALED_MARK = 1  # the format before: read, without a CRC of its own
FIRST_MARK = 0  # the first format's: found by length(), not read
_MARKS = (MARK, UNSEALED_MARK, FIRST_MARK)
HEAD = struct.Struct("<BII")  # mark, rows, length of the rest
ROW = struct.Struct("<qqqq4H")
SEAL = struct.Struct("<I")  # the section's CRC, at its end
NONE = 0  # the index of no text (texts[0] is the project, never a row's)
MAX_TEXTS = 0xFFFF
_TEXTS = msgspec.json.Decoder(list[str])
_ENCODER = msgspec.json.Encoder()
JSON_STARTS = b"[{"  # a payload is an array or an object (storage/log/details.py)


def encode(project, events):
    """The section of `project`'s `events`, or b"" if they name too many texts. Each event
    has .item["time"], .experience_id (None for an event that is not a screen view),
    .anonymous_id, .user_id and .screen: (id, revision, experience name, name) of a screen
    view's properties, each a string or None; None for an event that is not one (as
    app/validate.py's SdkEvent)."""
    # Each distinct install and user keyed once (a request is most often one install's).
    devices, users = _Keys(project, "anon:"), _Keys(project, "user:")
    # text -> its index, numbered on first sight in C; texts[0] is the project, so from 1.
    named = collections.defaultdict(itertools.count(1).__next__)
    rows = bytearray()
    try:
        for event in events:
            user = event.user_id
            screen = event.screen
            if screen is None:
                rows += ROW.pack(event.item["time"], -1, devices[event.anonymous_id],
                                 users[user] if user else 0, NONE, NONE, NONE, NONE)
                continue
            screen_id, revision, experience_name, name = screen
            rows += ROW.pack(event.item["time"], event.experience_id, devices[event.anonymous_id],
                             users[user] if user else 0,
                             named[screen_id] if screen_id else NONE,
                             named[revision] if revision else NONE,
                             named[experience_name] if experience_name else NONE,
                             named[name] if name else NONE)
    except struct.error:  # a value past its field: an index past MAX_TEXTS, say
        return b""
    rest = bytes(rows) + _ENCODER.encode([project, *named])
    return seal(HEAD.pack(MARK, len(rows) // ROW.size, len(rest) + SEAL.size) + rest
                + bytes(SEAL.size))


def seal(section, before=b""):
    """`section` (encode's) with its CRC made of `before` (what its container puts before
    it: a details group's head) and of itself, as the format says."""
    sealed = section[:-SEAL.size]
    return sealed + SEAL.pack(zlib.crc32(sealed, zlib.crc32(before)))


class _Keys(dict):
    """{id: its key} of `project`'s installs ("anon:") or users ("user:"), each keyed when
    first asked for."""

    def __init__(self, project, kind):
        super().__init__()
        self.project, self.kind = project, kind

    def __missing__(self, text):
        key = self[text] = project_person_key(self.project, self.kind, text)
        return key


def length(stored):
    """The length of the section a group's `stored` bytes (what follows its header) begin
    with, of this format or the first, or 0 if they do not begin with one whose JSON follows
    (then the bytes are taken as JSON whole, and whatever does not decode is set aside by
    the worker)."""
    head = _head(stored)
    return head[2] if head else 0


def _head(stored, alone=False):
    """(mark, rows, length) of the section `stored` begins with, as length() finds it (JSON
    follows it), or with `alone`, ending where `stored` ends; or None."""
    try:
        mark, rows, rest = HEAD.unpack_from(stored)
    except struct.error:  # shorter than a head
        return None
    end = HEAD.size + rest
    if mark not in _MARKS:
        return None
    if alone:
        return (mark, rows, end) if end == len(stored) else None
    return (mark, rows, end) if end < len(stored) and stored[end] in JSON_STARTS else None


# A Section's parts picked in C, for the reader of a commit's thousands of them
# (worker/columns.py).
SECTION_ROWS, SECTION_COUNT, SECTION_TEXTS = map(operator.itemgetter, range(3))


class Section(tuple):
    """A section read (read()): its `rows` (bytes, ROW each), their `count`, and its
    `texts` (texts[0] the project). A tuple, made as Section((rows, count, texts)): in C,
    with no call of Python's, since the overview's catch-up makes one a group."""

    __slots__ = ()
    rows = property(SECTION_ROWS)
    count = property(SECTION_COUNT)
    texts = property(SECTION_TEXTS)

    def without(self, dropped):
        """This section but for the rows at the indexes in `dropped` (a set): a cluster
        message's events that repeat earlier ones."""
        rows = self.rows
        kept = [at for at in range(self.count) if at not in dropped]
        return Section((b"".join(rows[at * ROW.size:(at + 1) * ROW.size] for at in kept),
                        len(kept), self.texts))


def read(stored, alone=False, known=None, before=b""):
    """The Section a group's `stored` bytes (details.Group.stored) begin with, or None if
    they begin with none (length() is 0), with one of the first format, or with one that
    does not read: rows past its length, a CRC that does not match (`before`: the bytes
    its container puts before it, details.Group.head), or texts that are not a non-empty
    array of strings. With `alone`, `stored` is a section and nothing after it (a cluster
    SDK message's columns: storage/stream/sdk_message.py). `known`: texts already read,
    {their JSON: the list}, taken from and added to: requests list the same screens and
    names, and equal texts are then one list (worker/columns.py numbers each list once).
    The overview's catch-up of data1.details reads its sections in the same way in a loop
    of its own (storage/log/details.read_stretch), a call a group costing too much there."""
    head = _head(stored, alone)
    if head is None:
        return None
    mark, count, end = head
    texts_at = HEAD.size + count * ROW.size
    if mark == MARK:
        end -= SEAL.size
        if texts_at > end or (zlib.crc32(stored[:end], zlib.crc32(before))
                              != SEAL.unpack_from(stored, end)[0]):
            return None
    elif mark != UNSEALED_MARK or texts_at > end:
        return None
    raw = stored[texts_at:end]  # a copy of about 200 bytes costs less than a memoryview
    if known is None:
        known = {}
    texts = known.get(raw)
    if texts is None:
        texts = read_texts(raw)
        if texts is None:
            return None
        known[raw] = texts
    return Section((stored[HEAD.size:texts_at], count, texts))


def read_texts(raw):
    """A section's texts (its JSON array, bytes) as a list, or None if they do not read: not
    a non-empty array of strings."""
    try:
        texts = _TEXTS.decode(raw)
    except (msgspec.MsgspecError, ValueError):
        return None
    return texts or None
