"""The reader of data1: complete tokens from a byte offset on, in bounded chunks.

The format is in app/log_format.py. The reader never reads data1 from the start again: it
starts at the checkpoint's offset, and it never consumes a token that no separator follows
yet (that is a torn tail, or an append still in progress), so the offset it reports is always
just after a separator.
"""

import collections
import os

from app.log_format import MAX_TOKEN_LEN, last_separator, parse_token

CHUNK_SIZE = 256 * 1024  # measured: big enough to amortise calls, small enough to stay in cache


def complete_blocks(data1_fd, offset, chunk_size=CHUNK_SIZE):
    """Yield (block, end): bytes holding only complete tokens, and the data1 offset after them.

    Each block ends with a separator. A token split across two reads is carried into the
    next block whole, never split in two. Memory stays bounded by chunk_size: of a run of
    bytes with no separator, only its first MAX_TOKEN_LEN + 1 bytes are kept, which is enough
    to know it is not an id (it will be skipped as one token once it ends).
    """
    pending = b""  # read, but no separator after it yet: the start of an incomplete token
    read_at = offset
    while True:
        data = os.pread(data1_fd, chunk_size, read_at)
        if not data:
            return
        read_at += len(data)
        cut = last_separator(data)
        if cut < 0:
            pending = (pending + data)[: MAX_TOKEN_LEN + 1]
            continue
        yield pending + data[: cut + 1], read_at - len(data) + cut + 1
        pending = data[cut + 1 :]


class Tally:
    """Counts tokens as raw bytes (no decoding per token); turns them into ids on demand.

    `seen` totals the tokens added; `events` and `skipped` total everything drained so far.
    """

    def __init__(self):
        self._tokens = collections.Counter()
        self.seen = 0
        self.events = 0
        self.skipped = 0

    def add(self, block):
        tokens = block.split()
        self.seen += len(tokens)
        self._tokens.update(tokens)

    def drain_into(self, counts):
        """Add the valid ids seen since the last drain to `counts` (id -> count) and forget
        them. Returns (skipped, a few of the skipped tokens) for this drain."""
        skipped = 0
        invalid = []
        for token, times in self._tokens.items():
            experience_id = parse_token(token)
            if experience_id is None:
                skipped += times
                invalid.append(token)
            else:
                counts[experience_id] = counts.get(experience_id, 0) + times
                self.events += times
        self._tokens.clear()
        self.skipped += skipped
        return skipped, invalid[:5]
