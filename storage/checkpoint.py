"""data2, the checkpoint: the worker's position in data1 and the counts up to it, in one file.

The store that writes and reads it is storage/checkpoint_store.py.

Format (version 1)
    One JSON object, replaced whole on every commit:

        {"version": 1, "offset": 8, "events": 3, "skipped": 0, "fingerprint": "9f2c...",
         "updated_at": "2026-11-25T10:00:05.123Z", "counts": {"1": 2, "100": 1}}

    version      the format's version; a data2 without one was written before versions
                 existed and reads as version 1. A newer version is refused, never guessed at.
    offset       bytes of data1 consumed: always just after a separator
    counts       experience id (canonical decimal string) -> times seen, in numeric order
    events       sum of counts
    skipped      complete tokens before offset that were not valid ids
    fingerprint  sha256 of data1's first 64 bytes and the 64 bytes before offset, so a data1
                 that was replaced or rewritten under the checkpoint is noticed
                 (storage/log_reader.py computes it)
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

from storage.log_format import parse_token

VERSION = 1

# The fingerprint of offset 0 is the hash of no bytes at all: data1[0:0] is empty whatever
# file it is, so the empty checkpoint matches every data1, as it should: counting from 0
# needs nothing from the file.
EMPTY_FINGERPRINT = hashlib.sha256(b"").hexdigest()


class CorruptCheckpoint(Exception):
    """data2 exists but cannot be trusted; the message says why."""


class UnsupportedVersion(CorruptCheckpoint):
    """data2 was written in a format this code does not know (by a newer version of it)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    offset: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # int id -> int count
    skipped: int = 0
    fingerprint: str = EMPTY_FINGERPRINT
    updated_at: str = ""

    @property
    def events(self):
        return sum(self.counts.values())

    def top(self, n):
        """The n largest (id, count) pairs, largest first; equal counts in id order."""
        return heapq.nlargest(n, self.counts.items(), key=lambda item: (item[1], -item[0]))

    def age(self, now=None):
        """Seconds since this checkpoint was committed, or None before the first commit."""
        if not self.updated_at:
            return None
        committed = datetime.datetime.fromisoformat(self.updated_at)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return max(0.0, (now - committed).total_seconds())


def utc_now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def encode(checkpoint):
    counts = checkpoint.counts
    # Written by hand rather than with json.dumps over a new dict: the ids are ints and the
    # output must be in numeric order, and this avoids building a million-entry str dict.
    counts_json = ", ".join([f'"{key}": {counts[key]}' for key in sorted(counts)])
    head = json.dumps(
        {
            "version": VERSION,
            "offset": checkpoint.offset,
            "events": checkpoint.events,
            "skipped": checkpoint.skipped,
            "fingerprint": checkpoint.fingerprint,
            "updated_at": checkpoint.updated_at,
        }
    )
    return f'{head[:-1]}, "counts": {{{counts_json}}}}}\n'.encode("ascii")


def decode(data):
    """Parse and check data2's bytes. Raises CorruptCheckpoint (or UnsupportedVersion)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:  # includes empty, NUL-filled, truncated
        raise CorruptCheckpoint(f"not valid JSON ({error})") from None
    if type(document) is not dict:
        raise CorruptCheckpoint("not a JSON object")
    version = document.get("version", 1)
    if version != VERSION:
        raise UnsupportedVersion(
            f"format version {version!r}; this program reads version {VERSION} "
            "(was it written by a newer mini-analytics?)"
        )

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
        # The same rule data1's tokens follow: one canonical spelling per id.
        experience_id = parse_token(key.encode("utf-8", "replace"))
        if experience_id is None:
            raise CorruptCheckpoint(f"counts has a key that is not an experience id: {key!r}")
        if type(count) is not int or count <= 0:
            raise CorruptCheckpoint(f"counts[{key!r}] is not a positive integer")
        counts[experience_id] = count
    events = sum(counts.values())
    # Every token takes at least two bytes (a digit and a separator).
    if 2 * (events + skipped) > offset:
        raise CorruptCheckpoint(f"{events + skipped} tokens cannot fit in {offset} bytes")
    return Checkpoint(offset, counts, skipped, digest, str(document.get("updated_at", "")))
