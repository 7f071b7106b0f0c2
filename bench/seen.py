"""`python -m bench seen`: how fast a cluster partition's worker decides which SDK events
repeat (storage/views/seen_store.py), as the keys of its window pile up.

For each size of the window already held (HELD), the store decides ROUNDS commits of
MESSAGES messages of BATCH fresh events each (new random keys: the common case, which must
be answered "never seen" without reading a run), and commits; on a file store, as the
worker keeps it. The baseline, in the same run: the same messages decided by a plain dict of
the keys (the rule's least work, all in memory). Figures are SDK events per CPU-second of
this process, and the store's ratio to the dict.
"""

import os
import shutil
import time

from bench.harness import scratch_dir
from storage.layout import Layout
from storage.views.seen_store import SeenStore

HELD = (0, 500_000, 2_000_000)
ROUNDS = 20
MESSAGES = 300  # a commit's messages, about what a worker's pass reads of a partition
BATCH = 50  # events a message: one request's, as the soak sends them
WINDOW = 86_400


class _Message:
    def __init__(self, keys):
        self.keys = keys
        self.window = WINDOW


def _messages(count):
    return [_Message([os.urandom(16) for _ in range(BATCH)]) for _ in range(count)]


def _decide_with_dict(latest, sequence, stored_ms, message):
    """The rule over a dict of key -> latest stored time: the baseline."""
    since = stored_ms - WINDOW * 1000
    repeats, inside = [], set()
    for item, key in enumerate(message.keys):
        before = latest.get(key)
        if key in inside or (before is not None and before >= since):
            repeats.append(item)
        inside.add(key)
        latest[key] = stored_ms if before is None else max(before, stored_ms)
    return repeats


def _measure(held):
    folder = scratch_dir()
    store = SeenStore(Layout(folder), folder / "seen-p1.sqlite3")
    store.open("bench")
    latest, sequence, start_ms = {}, 0, 1_700_000_000_000
    try:
        for _ in range(held // (MESSAGES * BATCH)):  # fill the window
            for message in _messages(MESSAGES):
                sequence += 1
                store.repeats_in(sequence, start_ms + sequence, message)
                _decide_with_dict(latest, sequence, start_ms + sequence, message)
            store.commit(sequence)
        store_seconds = dict_seconds = 0.0
        for _ in range(ROUNDS):
            messages = _messages(MESSAGES)  # made outside the timing
            first = sequence
            began = time.process_time()
            for offset, message in enumerate(messages, 1):
                store.repeats_in(first + offset, start_ms + first + offset, message)
            store.commit(first + len(messages))
            store_seconds += time.process_time() - began
            began = time.process_time()
            for offset, message in enumerate(messages, 1):
                _decide_with_dict(latest, first + offset, start_ms + first + offset, message)
            dict_seconds += time.process_time() - began
            sequence = first + len(messages)
        events = ROUNDS * MESSAGES * BATCH
        return events / store_seconds, events / dict_seconds
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


def bench_seen():
    results = {}
    for held in HELD:
        store_rate, dict_rate = _measure(held)
        results[f"seen_{held}_events_s"] = store_rate
        results[f"seen_{held}_dict_events_s"] = dict_rate
    return results


def rows(results):
    """The bench table's lines for this part."""
    lines = []
    for held in HELD:
        if f"seen_{held}_events_s" in results:
            store_rate, dict_rate = (results[f"seen_{held}_events_s"],
                                     results[f"seen_{held}_dict_events_s"])
            lines.append((f"Seen store, {held:,} keys (events/CPU-s, / dict)",
                          f"{store_rate:,.0f} ({store_rate / dict_rate:.2f})"))
    return lines
