"""The reader of data1: complete tokens from a byte offset on, in bounded chunks.

The format is in storage/log/format.py. The reader never reads data1 from the start again: it
starts at the checkpoint's offset, and it never consumes a token that no separator follows
yet (that is a torn tail, or an append still in progress), so the offset it reports is always
just after a separator.
"""

import hashlib
import os

from storage.layout import names_open_file
from storage.log.format import MAX_TOKEN_LEN, last_separator

CHUNK_SIZE = 256 * 1024  # measured: big enough to amortise calls, small enough to stay in cache
FINGERPRINT_SPAN = 64


class LogReader:
    """data1 opened for reading by the worker (it may start before the ingest created it)."""

    def __init__(self, path):
        self.path = path
        self.fd = None
        self.open()

    def open(self):
        self.close()
        # O_CREAT: the worker may start before the ingest has written anything.
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def replaced(self):
        """True if the name data1 no longer leads to the file this reader holds open."""
        return not names_open_file(self.path, self.fd)

    def size(self):
        return os.fstat(self.fd).st_size

    def make_durable(self):
        """fdatasync data1: whatever was appended so far survives a power loss."""
        os.fdatasync(self.fd)

    def blocks(self, offset, chunk_size=CHUNK_SIZE, end=None):
        return complete_blocks(self.fd, offset, chunk_size, end)

    def fingerprint(self, offset):
        """Hash of the bytes that identify data1[0:offset]: its first and its last 64 bytes."""
        head = os.pread(self.fd, min(FINGERPRINT_SPAN, offset), 0)
        tail_start = max(0, offset - FINGERPRINT_SPAN)
        tail = os.pread(self.fd, offset - tail_start, tail_start)
        return hashlib.sha256(head + tail).hexdigest()

    def mismatch(self, offset, fingerprint):
        """Why a checkpoint at (offset, fingerprint) does not describe this data1, or None."""
        size = self.size()
        if size < offset:
            return f"data1 is {size} bytes, shorter than the checkpoint's offset {offset}"
        if self.fingerprint(offset) != fingerprint:
            return "data1's bytes before the checkpoint's offset are not the ones it counted"
        return None


def complete_blocks(data1_fd, offset, chunk_size=CHUNK_SIZE, end=None):
    """Yield (block, end): bytes holding only complete tokens, and the data1 offset after them.

    Reads up to the end of the file, or up to `end` if given (an offset just after a
    separator, as a previous read reported). Each block ends with a separator. A token split
    across two reads is carried into the next block whole, never split in two. Memory stays
    bounded by chunk_size: of a run of bytes with no separator, only its first
    MAX_TOKEN_LEN + 1 bytes are kept, which is enough to know it is not an id (it will be
    skipped as one token once it ends).
    """
    pending = b""  # read, but no separator after it yet: the start of an incomplete token
    read_at = offset
    while end is None or read_at < end:
        size = chunk_size if end is None else min(chunk_size, end - read_at)
        data = os.pread(data1_fd, size, read_at)
        if not data:
            return
        read_at += len(data)
        cut = last_separator(data)
        if cut < 0:
            pending = (pending + data)[: MAX_TOKEN_LEN + 1]
            continue
        yield pending + data[: cut + 1], read_at - len(data) + cut + 1
        pending = data[cut + 1 :]
