"""data2, the checkpoint: the worker's position in data1 and the counts up to it, in one file.

Format
    One JSON object, replaced whole on every commit:

        {"offset": 8, "events": 3, "skipped": 0, "fingerprint": "9f2c...",
         "updated_at": "2026-11-25T10:00:05.123Z", "counts": {"1": 2, "100": 1}}

    offset       bytes of data1 consumed: always just after a separator
    counts       experience id (canonical decimal string) -> times seen, in numeric order
    events       sum of counts
    skipped      complete tokens before offset that were not valid ids
    fingerprint  sha256 of data1's first 64 bytes and the 64 bytes before offset, so a data1
                 that was replaced or rewritten under the checkpoint is noticed
    updated_at   when this checkpoint was committed (UTC)

Invariant, true at every instant because offset and counts live in one atomically replaced
file (Kafka stores a consumer's position with its output for the same reason):

    counts == Counter(valid complete tokens in data1[0:offset])
"""

import dataclasses
import datetime
import hashlib
import heapq
import json
import os

from app.log_format import MAX_ID

DATA2 = "data2"
TEMP_SUFFIX = ".tmp"
FINGERPRINT_SPAN = 64


class CorruptCheckpoint(Exception):
    """data2 exists but cannot be trusted; the message says why."""


@dataclasses.dataclass
class Checkpoint:
    offset: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # int id -> int count
    skipped: int = 0
    fingerprint: str = hashlib.sha256().hexdigest()
    updated_at: str = ""

    @property
    def events(self):
        return sum(self.counts.values())

    def top(self, n):
        """The n largest (id, count) pairs, largest first; equal counts in id order."""
        return heapq.nlargest(n, self.counts.items(), key=lambda item: (item[1], -item[0]))


def fingerprint(data1_fd, offset):
    """Hash of the bytes that identify data1[0:offset]: its first and its last 64 bytes."""
    head = os.pread(data1_fd, min(FINGERPRINT_SPAN, offset), 0)
    tail_start = max(0, offset - FINGERPRINT_SPAN)
    tail = os.pread(data1_fd, offset - tail_start, tail_start)
    return hashlib.sha256(head + tail).hexdigest()


def encode(checkpoint):
    counts = checkpoint.counts
    # Written by hand rather than with json.dumps over a new dict: the ids are ints and the
    # output must be in numeric order, and this avoids building a million-entry str dict.
    counts_json = ", ".join([f'"{key}": {counts[key]}' for key in sorted(counts)])
    head = json.dumps(
        {
            "offset": checkpoint.offset,
            "events": checkpoint.events,
            "skipped": checkpoint.skipped,
            "fingerprint": checkpoint.fingerprint,
            "updated_at": checkpoint.updated_at,
        }
    )
    return f'{head[:-1]}, "counts": {{{counts_json}}}}}\n'.encode("ascii")


def decode(data):
    """Parse and check data2's bytes. Raises CorruptCheckpoint naming what is wrong."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:  # includes empty, NUL-filled, truncated
        raise CorruptCheckpoint(f"not valid JSON ({error})") from None
    if type(document) is not dict:
        raise CorruptCheckpoint("not a JSON object")

    def field(name, kind):
        value = document.get(name)
        if type(value) is not kind:
            raise CorruptCheckpoint(f"{name!r} is missing or not of type {kind.__name__}")
        return value

    offset, skipped = field("offset", int), field("skipped", int)
    raw_counts, digest = field("counts", dict), field("fingerprint", str)
    if offset < 0 or skipped < 0:
        raise CorruptCheckpoint(f"negative offset ({offset}) or skipped ({skipped})")
    counts = {}
    for key, count in raw_counts.items():
        experience_id = int(key) if key.isdigit() and len(key) < 20 else -1
        if str(experience_id) != key or experience_id > MAX_ID:
            raise CorruptCheckpoint(f"counts has a key that is not an experience id: {key!r}")
        if type(count) is not int or count <= 0:
            raise CorruptCheckpoint(f"counts[{key!r}] is not a positive integer")
        counts[experience_id] = count
    events = sum(counts.values())
    # Every token takes at least two bytes (a digit and a separator).
    if 2 * (events + skipped) > offset:
        raise CorruptCheckpoint(f"{events + skipped} tokens cannot fit in {offset} bytes")
    return Checkpoint(offset, counts, skipped, digest, str(document.get("updated_at", "")))


def load(path):
    """The checkpoint at `path`, or None if there is none. Raises CorruptCheckpoint."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    return decode(data)


def replace_durably(path, data):
    """Replace the file at `path` with `data`, atomically and durably.

    Guarantee: at any instant, including after a crash or power loss at any point inside this
    function, `path` holds either its old contents or exactly `data`: never a mix, never
    empty, never missing (if it existed). Once this returns, it holds `data` durably.
    A stray temp file left by a crash here is harmless: it is never read, and the next call
    truncates it.
    """
    temp = f"{path}{TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # The temp file's bytes must be on disk before the rename can make them data2; else a
        # power loss could leave a renamed but empty or NUL-filled data2.
        os.fsync(fd)
    finally:
        os.close(fd)
    # rename(2) swaps the name in one step; the old data2 stays whole until that moment.
    # Never delete the old file first: that opens a window with no checkpoint at all.
    os.replace(temp, path)
    # The rename lives in the directory: fsync it, or a power loss could undo it.
    fsync_directory(os.path.dirname(path) or ".")


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(path, checkpoint, data1_fd):
    """Make `checkpoint` the durable data2. Any OSError propagates: the caller must exit."""
    # The pointer must never get ahead of the data: data1's bytes up to the new offset are
    # made durable before a checkpoint that claims them is.
    os.fdatasync(data1_fd)
    checkpoint.fingerprint = fingerprint(data1_fd, checkpoint.offset)
    checkpoint.updated_at = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    replace_durably(path, encode(checkpoint))


def mismatch(checkpoint, data1_fd):
    """Why `checkpoint` does not describe this data1, or None if it does."""
    size = os.fstat(data1_fd).st_size
    if size < checkpoint.offset:
        return f"data1 is {size} bytes, shorter than the checkpoint's offset {checkpoint.offset}"
    if fingerprint(data1_fd, checkpoint.offset) != checkpoint.fingerprint:
        return "data1's bytes before the checkpoint's offset are not the ones it counted"
    return None
