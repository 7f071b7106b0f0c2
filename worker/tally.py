"""Counting: tokens of data1 in, experience ids and their counts out."""

import collections

from storage.log_format import parse_token


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

    def pending_invalid(self):
        """True if a token added since the last drain is not an experience id."""
        return any(parse_token(token) is None for token in self._tokens)

    def discard_pending(self):
        """Forget the tokens added since the last drain (to add them again)."""
        self._tokens.clear()

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
