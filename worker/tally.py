"""Counting: tokens of data1 in, experience ids and their counts out, per project."""

import collections
import itertools

from storage.log.format import parse_key
from storage.views.series_store import ALL


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
        return any(parse_key(token) is None for token in distinct)

    def discard_pending(self):
        """Forget the tokens added since the last drain (to add them again)."""
        self._by_minute.clear()
        self._pairs = 0

    def drain_into(self, counts, projects=None):
        """Add the valid ids seen since the last drain to `counts` (id -> count) and, those of
        a named project, to `projects` (project -> {id -> count}), and forget them. Returns
        (skipped, a few of the skipped tokens, the dated ones' minute rows and hour rows),
        each row (bucket start, experience, count) in bucket order, `experience` the id or
        ALL in the default project, and (project, id or ALL) in a named one.

        A catch-up drains hundreds of thousands of (minute, experience) pairs, so the work
        per pair is left to C: each distinct token is parsed once, and a bucket's rows come
        from one sort of its ids, built with map and zip rather than a loop. Undated tokens
        (the series off) count in the totals only."""
        dated = sorted(minute for minute in self._by_minute if minute is not None)
        counters = self._by_minute.values()
        keys = {token: parse_key(token) for token in set().union(*counters)}
        invalid = [token for token, key in keys.items() if key is None]
        if not any(key[0] for key in keys.values() if key is not None):
            # The default project's alone (every event, with no projects): the rows by id.
            keys = {token: key[1] for token, key in keys.items() if key is not None}
            bucket_rows = _rows
        else:
            bucket_rows = _project_rows
        skipped = sum(counter.pop(token, 0) for token in invalid for counter in counters)
        minute_rows, by_hour = [], {}  # by_hour: hour start -> Counter of its tokens
        for minute in dated:
            counter = self._by_minute[minute]
            if counter:
                minute_rows.extend(bucket_rows(minute, counter, keys))
                hour = minute - minute % 3600
                if hour in by_hour:
                    by_hour[hour].update(counter)
                else:
                    by_hour[hour] = collections.Counter(counter)
        totals = collections.Counter(self._by_minute.get(None, ()))
        hour_rows = []
        for hour, counter in sorted(by_hour.items()):
            hour_rows.extend(bucket_rows(hour, counter, keys))
            totals.update(counter)
        events = 0
        for token, times in totals.items():  # once per distinct token
            key = keys[token]
            project, experience_id = key if type(key) is tuple else ("", key)
            into = counts if not project else projects.setdefault(project, {})
            into[experience_id] = into.get(experience_id, 0) + times
            events += times
        self.events += events
        self.discard_pending()
        self.skipped += skipped
        return skipped, invalid[:5], minute_rows, hour_rows


def _rows(bucket, counter, ids):
    """The bucket's rows, (bucket, ALL, total) then (bucket, id, count) by id, from its
    Counter of valid tokens, all of the default project (`ids`: token -> id)."""
    by_id = dict(zip(map(ids.__getitem__, counter), counter.values()))
    order = sorted(by_id)  # plain ints: a far cheaper sort than of (id, count) pairs
    total = [(bucket, ALL, sum(by_id.values()))]
    return itertools.chain(total, zip(itertools.repeat(bucket), order,
                                      map(by_id.__getitem__, order)))


def _project_rows(bucket, counter, keys):
    """The bucket's rows when named projects have tokens in it (`keys`: token -> (project,
    id)): the default project's as _rows gives them, each named project's the same with
    (project, ALL) and (project, id) for ALL and id."""
    by_key = dict(zip(map(keys.__getitem__, counter), counter.values()))
    rows, totals = [], collections.Counter()
    for (project, experience_id), count in sorted(by_key.items()):
        totals[project] += count
        rows.append((bucket, (project, experience_id) if project else experience_id, count))
    heads = [(bucket, (project, ALL) if project else ALL, total)
             for project, total in sorted(totals.items())]
    return heads + rows
