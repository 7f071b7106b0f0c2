"""Counting: tokens of data1 in, experience ids and their counts out."""

import collections

from storage.log_format import parse_token


class Tally:
    """Counts tokens as raw bytes (no decoding per token), per minute when they are dated;
    turns them into ids on demand.

    `seen` totals the tokens added; `events` and `skipped` total everything drained so far.
    """

    def __init__(self):
        self._by_minute = {}  # minute start (Unix seconds), or None if undated -> Counter
        self.seen = 0
        self.events = 0
        self.skipped = 0

    def add(self, block, minute=None):
        tokens = block.split()
        self.seen += len(tokens)
        counter = self._by_minute.get(minute)
        if counter is None:
            counter = self._by_minute[minute] = collections.Counter()
        counter.update(tokens)

    def pending_invalid(self):
        """True if a token added since the last drain is not an experience id."""
        return any(parse_token(token) is None
                   for counter in self._by_minute.values() for token in counter)

    def discard_pending(self):
        """Forget the tokens added since the last drain (to add them again)."""
        self._by_minute.clear()

    def drain_into(self, counts):
        """Add the valid ids seen since the last drain to `counts` (id -> count) and forget
        them. Returns (skipped, a few of the skipped tokens, {minute: {id: count}} of the
        dated ones) for this drain."""
        skipped = 0
        invalid = []
        by_minute = {}
        ids = {}  # token -> id, parsed once however many minutes it appears in
        for minute, counter in self._by_minute.items():
            minute_counts = {} if minute is not None else None
            for token, times in counter.items():
                experience_id = ids.get(token, -1)
                if experience_id == -1:
                    experience_id = ids[token] = parse_token(token)
                if experience_id is None:
                    skipped += times
                    invalid.append(token)
                    continue
                counts[experience_id] = counts.get(experience_id, 0) + times
                self.events += times
                if minute_counts is not None:
                    minute_counts[experience_id] = times
            if minute_counts:
                by_minute[minute] = minute_counts
        self._by_minute.clear()
        self.skipped += skipped
        return skipped, invalid[:5], by_minute
