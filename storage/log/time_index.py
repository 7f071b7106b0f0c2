"""data1.timeindex: when each part of data1 was written, at most one entry a second.

Kafka's design: beside each log segment, a time index of (timestamp, offset) entries that
the writer appends, so that a reader maps byte ranges to times. data1 itself stays ids and
spaces.

Format
    A sequence of 16-byte entries, each two little-endian unsigned 64-bit integers:

        second   Unix time (UTC) at which the ingest accepted the records starting here
        offset   the data1 offset of the first record appended in that second

    An entry dates every data1 byte from its offset up to the next entry's offset. Seconds
    never decrease (a clock stepped back keeps the last second) and offsets never decrease.

Invariants
    * The writer appends an entry before the data1 bytes it dates, and makes it durable
      with them, before their 202: an acknowledged event's time is as durable as the event.
      That costs at most one extra fdatasync a second.
    * A torn last entry (a crash mid-write) is dropped, and so are entries that point past
      data1's end after its torn-tail repair: both by the writer, when it opens the index.
    * A missing or damaged index never changes what is counted, only when it is said to
      have happened: bytes no entry dates are dated by the nearest entry after them, and
      with no entry at all, to the Unix epoch (1970-01-01T00:00:00Z). The worker logs it.
"""

import logging
import os
import struct

from storage.durable import append_whole

log = logging.getLogger("ingest")

ENTRY = struct.Struct("<QQ")
EPOCH = 0  # the second given to bytes that no entry dates


class TimeIndexWriter:
    """The ingest's side: one entry per new second, appended before the data it dates."""

    def __init__(self, path, data1_size, data1_mtime):
        # O_RDWR, not O_WRONLY: repair reads the entries back.
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.written = 0  # entries appended by this process
        self.synced = 0
        self.size = 0  # the file's length, whole entries only (set by _repair)
        self.last_second = self._repair(data1_size, data1_mtime)

    def _repair(self, data1_size, data1_mtime):
        size = os.fstat(self.fd).st_size
        keep = size - size % ENTRY.size  # a torn last entry
        while keep:
            second, offset = ENTRY.unpack(os.pread(self.fd, ENTRY.size, keep - ENTRY.size))
            if offset <= data1_size:
                break
            keep -= ENTRY.size  # dates bytes that data1's repair removed
        if keep < size:
            os.ftruncate(self.fd, keep)
            os.fsync(self.fd)
        self.size = keep
        if keep:
            return ENTRY.unpack(os.pread(self.fd, ENTRY.size, keep - ENTRY.size))[0]
        if data1_size:
            # A data1 written before it had an index: date it all by its last change, the
            # latest its events can be from (an upper bound, and the same on every recount).
            self.append(int(data1_mtime), 0)
            self.sync()
            return int(data1_mtime)
        return EPOCH

    def note(self, second, offset):
        """Date the records about to be appended at `offset`. Returns True if an entry was
        written (it must be made durable before those records are acknowledged)."""
        if second <= self.last_second:
            return False
        self.append(second, offset)
        self.last_second = second
        return True

    def append(self, second, offset):
        """Append an entry, whole or not at all: a write that fails, or takes part of it, is
        cut off again before the OSError is raised, so that no later entry is written out
        of step with the 16-byte grid (storage/durable.append_whole)."""
        append_whole(self.fd, ENTRY.pack(second, offset), self.size, "data1.timeindex", log)
        self.size += ENTRY.size
        self.written += 1

    def sync(self):
        os.fdatasync(self.fd)

    def close(self):
        os.close(self.fd)


class TimeIndexReader:
    """The worker's side: which second dates each part of a data1 range."""

    def __init__(self, path):
        self.path = path

    def spans(self, start, end):
        """[(offset, second), ...]: the entries that date data1[start:end], in order.

        The first one dates `start` (its offset is clamped up to `start`); each next one
        dates from its offset on. Entries out of order are skipped, so a damaged index
        degrades attribution without stopping the count. Empty if there is no index.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            count = os.fstat(fd).st_size // ENTRY.size
            if not count:
                return []
            entry = lambda i: ENTRY.unpack(os.pread(fd, ENTRY.size, i * ENTRY.size))  # noqa: E731
            # The last entry whose offset is at or before start (binary search by offset).
            low, high = 0, count
            while low < high:
                middle = (low + high) // 2
                if entry(middle)[1] <= start:
                    low = middle + 1
                else:
                    high = middle
            first = max(0, low - 1)
            second, entry_offset = entry(first)
            spans = [(start, second)]
            index = first + 1
            # Read on in chunks of entries until past `end`.
            while index < count:
                batch = os.pread(fd, ENTRY.size * min(4096, count - index), index * ENTRY.size)
                for next_second, next_offset in ENTRY.iter_unpack(batch):
                    if next_offset >= end:
                        return spans
                    if next_offset < entry_offset or next_second < spans[-1][1]:
                        continue  # out of order: a damaged index; skip the entry
                    if next_offset == entry_offset or next_offset <= start:
                        # A later entry for the same bytes (an append that failed and was
                        # retried a second later): the later one dates them.
                        spans[-1] = (spans[-1][0], next_second)
                    else:
                        spans.append((next_offset, next_second))
                    entry_offset = next_offset
                index += len(batch) // ENTRY.size
            return spans
        finally:
            os.close(fd)
