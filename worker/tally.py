"""Counting: tokens of data1 in, experience ids and their counts out."""

import collections

from storage.log_format import parse_token
from storage.series_store import ALL


class Tally:
    """Counts tokens as raw bytes (no decoding per token), per minute when they are dated;
    turns them into ids on demand, parsing each distinct token once.

    `seen` totals the tokens added; `events` and `skipped` total everything drained so far.
    """

    def __init__(self):
        self._by_minute = {}  # minute start (Unix seconds), or None if undated -> Counter
        self._pairs = 0  # distinct (minute, token) pairs held, bounded by the caller
        self.seen = 0
        self.events = 0
        self.skipped = 0

    def add(self, block, minute=None):
        tokens = block.split()
        self.seen += len(tokens)
        counter = self._by_minute.get(minute)
        if counter is None:
            counter = self._by_minute[minute] = collections.Counter()
        self._pairs -= len(counter)
        counter.update(tokens)
        self._pairs += len(counter)

    @property
    def pending_pairs(self):
        """How many distinct (minute, token) pairs wait to be drained: the memory held."""
        return self._pairs

    def pending_invalid(self):
        """True if a token added since the last drain is not an experience id."""
        # Each distinct token once, whatever the minutes it appears in.
        distinct = set().union(*self._by_minute.values())
        return any(parse_token(token) is None for token in distinct)

    def discard_pending(self):
        """Forget the tokens added since the last drain (to add them again)."""
        self._by_minute.clear()
        self._pairs = 0

    def drain_into(self, counts):
        """Add the valid ids seen since the last drain to `counts` (id -> count) and forget
        them. Returns (skipped, a few of the skipped tokens, the dated ones' minute rows and
        hour rows), each row (bucket start, experience id or ALL, count), sorted."""
        dated = [minute for minute in self._by_minute if minute is not None]
        if not dated:  # the common case when the series are off: one counter, no rows
            skipped, invalid = self._drain_undated(counts)
            return skipped, invalid, [], []
        skipped, invalid, ids, events = 0, [], {}, 0
        minute_rows, hours = [], {}
        for minute, counter in self._by_minute.items():
            hour = None if minute is None else minute - minute % 3600
            minute_total = 0
            for token, times in counter.items():
                experience_id = ids.get(token, -1)
                if experience_id == -1:
                    experience_id = ids[token] = parse_token(token)
                if experience_id is None:
                    skipped += times
                    invalid.append(token)
                    continue
                counts[experience_id] = counts.get(experience_id, 0) + times
                events += times
                if hour is not None:
                    minute_rows.append((minute, experience_id, times))
                    key = (hour, experience_id)
                    hours[key] = hours.get(key, 0) + times
                    minute_total += times
            if minute_total:
                minute_rows.append((minute, ALL, minute_total))
                hours[hour, ALL] = hours.get((hour, ALL), 0) + minute_total
        self.events += events
        self.discard_pending()
        self.skipped += skipped
        # In the store's key order, so that its B-trees are written front to back.
        minute_rows.sort()
        hour_rows = sorted((hour, experience, times) for (hour, experience), times in hours.items())
        return skipped, invalid[:5], minute_rows, hour_rows

    def _drain_undated(self, counts):
        skipped, invalid = 0, []
        for token, times in self._by_minute.get(None, {}).items():
            experience_id = parse_token(token)
            if experience_id is None:
                skipped += times
                invalid.append(token)
            else:
                counts[experience_id] = counts.get(experience_id, 0) + times
                self.events += times
        self.discard_pending()
        self.skipped += skipped
        return skipped, invalid[:5]
