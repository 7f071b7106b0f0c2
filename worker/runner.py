"""The worker's run loop: recover, then one pass now and one every interval.

A pass reads data1 from the checkpoint's offset (storage/log/reader.py), counts the complete
tokens (worker/tally.py), and commits offset and counts together (storage/log/checkpoint_store.py).
Recovery needs no special case: whatever instant the previous worker died at, data2 is either
the old checkpoint or the new one, each consistent with data1, and the next pass simply starts
from its offset. Anything in data2 that cannot be trusted is moved aside and data1 is counted
again from offset 0, which is exact because data1 holds every acknowledged event.

The counts over time (storage/views/series_store.py) are a second view of data1 with an offset of
its own, committed in its own transaction. The two views are committed one after the other,
so a crash can leave one ahead: recovery first brings the one behind up to the other (reading
only that stretch of data1), and from then on each pass feeds both from the same reads. The
time of each part of data1 comes from its time index (storage/log/time_index.py).

The experience overview (worker/overview.py) is a third view, of data1.details: each pass,
once data2 is committed, counts the details groups of the stretch data2 now covers. The counts
come first: when the overview is far behind (a new or rebuilt store, a burst of SDK events it
counts more slowly than the ingest takes them), it counts for about an interval a pass (in
commits sized by its speed to fit, to its first commit past it), and the passes follow each
other without waiting until it has caught up, so that data2 stays within about an interval of
data1 whatever the overview's backlog.
"""

import dataclasses
import logging
import time

from storage.checkpoint import EMPTY_FINGERPRINT, Checkpoint, CorruptCheckpoint
from storage.layout import Layout
from storage.lockfile import hold_exclusive_lock
from storage.log.checkpoint_store import CheckpointStore
from storage.log.reader import CHUNK_SIZE, LogReader
from storage.log.time_index import EPOCH, TimeIndexReader
from storage.process import Signals
from storage.views.series_store import CorruptSeries, SeriesStore
from worker.overview import Overview
from worker.tally import Tally

log = logging.getLogger("worker")

# During a long catch-up, commit every this many bytes of data1, so that a crash replays
# little and a restart shows progress.
COMMIT_EVERY = 32 * 1024 * 1024
# ... and whenever this many distinct (minute, experience) pairs wait in memory, which bounds
# the worker's memory when a backlog spans many minutes of many experiences.
COMMIT_PAIRS = 200_000


def plural(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class PassLoop:
    """The loop both workers share (this module's, on data1, and worker/stream_runner.py's,
    on the stream): take ownership of what is counted, recover, then one pass now and one
    every interval (at once if a pass took longer) until SIGTERM or SIGINT. A pass commits
    only whole, consistent checkpoints, so a stop (or a kill) at any instant loses nothing
    but uncommitted work."""

    signals = None  # set once running: SIGTERM and SIGINT ask for a stop (storage/process.py)

    interval = None  # seconds between passes, once running

    def run(self, interval):
        self.take_ownership()
        self.signals = Signals()
        self.interval = interval
        self.recover()
        while not self.signals.stop:
            # Passes begin every interval, not an interval after the last one ended: what
            # arrives just after a pass began waits one interval for the next, not an
            # interval and a pass's time.
            began = time.monotonic()
            self.run_pass()
            if self.catching_up():
                self.between_passes()
            elif self.wait(max(0.0, interval - (time.monotonic() - began))):
                break
        self.close()

    def catching_up(self):
        """True while a view has more to count than a pass gave it time for: the next pass
        begins at once."""
        return False

    def between_passes(self):
        """What must be done between two passes even when the next begins at once."""

    def wait(self, seconds):
        """Wait for the next pass; True if a stop was asked for meanwhile."""
        return self.signals.wait(seconds)

    def stop_requested(self):
        """True once a stop was asked for: a pass drops its uncommitted part and returns."""
        if self.signals and self.signals.stop:
            log.info("stop requested mid-pass; uncommitted work is dropped")
            return True
        return False


def report_skipped(skipped, samples):
    if skipped:
        log.warning(
            "skipped %s that %s not experience ids, e.g. %s",
            plural(skipped, "token"), "is" if skipped == 1 else "are",
            ", ".join(repr(token) for token in samples),
        )


class Worker(PassLoop):
    """The worker on data1 (single-machine mode)."""

    def __init__(self, state_dir, chunk_size=None, series=True, minute_retention=48 * 3600,
                 overview=True, session_timeout=1800, overview_store="sqlite"):
        self.layout = Layout(state_dir)
        self.store = CheckpointStore(state_dir)
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.data1 = None
        self.time_index = TimeIndexReader(self.layout.time_index)
        self.checkpoint = Checkpoint()
        # The counts over time, or None when they are off (MINI_ANALYTICS_SERIES=off).
        self.series = SeriesStore(state_dir, minute_retention) if series else None
        self.series_offset = 0
        self._undated_logged = False
        # The experience overview, or None when it is off (MINI_ANALYTICS_OVERVIEW=off).
        self.overview = Overview(state_dir, session_timeout,
                                 facts=overview_store == "duckdb") if overview else None
        self.overview_behind = False  # the last pass left details for the next

    def take_ownership(self):
        """Hold the worker lock: one worker per state folder. Raises AlreadyLocked."""
        hold_exclusive_lock(self.layout.worker_lock)  # the kernel releases it however we exit

    def close(self):
        if self.signals:
            log.info("worker stopped at offset %d", self.checkpoint.offset)
        if self.data1 is not None:
            self.data1.close()
            self.data1 = None
        if self.series is not None:
            self.series.close()
        if self.overview is not None:
            self.overview.close()

    def recover(self):
        """Load data2 and the series store, check them against data1 (each is started over
        from 0 if it cannot be used), then bring the one behind up to the other."""
        self.data1 = LogReader(self.layout.data1)
        stray = self.store.remove_stray_temp()
        if stray:
            log.info("removed %s left by an interrupted commit; it was never used", stray)
        try:
            loaded = self.store.load()
        except CorruptCheckpoint as problem:
            self.start_over(f"data2 is unreadable: {problem}")
        else:
            if loaded is None:
                log.info("no checkpoint yet: counting data1 from offset 0")
                self.checkpoint = Checkpoint()
            elif problem := self.data1.mismatch(loaded.offset, loaded.fingerprint):
                self.start_over(problem)
            else:
                self.checkpoint = loaded
                log.info(
                    "resuming from checkpoint: offset %d, %d events, %d experiences, "
                    "%d skipped", loaded.offset, loaded.events, len(loaded.counts),
                    loaded.skipped,
                )
        if self.series is not None:
            self._open_series()
        if self.overview is not None:
            self.overview.recover()
        self._align_views()  # the overview moves on in the first pass, after the counts

    def _open_series(self):
        try:
            state = self.series.open(EMPTY_FINGERPRINT)
        except CorruptSeries as problem:
            self.start_series_over(f"series.sqlite3 is unusable: {problem}")
            return
        problem = self.data1.mismatch(state.offset, state.fingerprint)
        if problem:
            self.start_series_over(problem)
            return
        self.series_offset = state.offset
        log.info("series store at offset %d, %d events", state.offset, state.events)

    def start_over(self, reason):
        """Never continue silently from a wrong state: keep the bad data2 aside, recount."""
        aside = self.store.set_aside()
        log.error(
            "CHECKPOINT REJECTED: %s; moved it aside to %s; recounting data1 from offset 0",
            reason, aside,
        )
        self.checkpoint = Checkpoint()

    def start_series_over(self, reason):
        """The same for the series store: set it aside, start an empty one, recount."""
        aside = self.series.set_aside()
        log.error("SERIES REJECTED: %s; moved it aside to %s; recounting data1 from offset 0",
                  reason, aside)
        self.series.open(EMPTY_FINGERPRINT)
        self.series_offset = 0

    def _align_views(self):
        """Bring the view that is behind (after a crash between the two commits, a rejected
        store, or series just switched on) up to the other, reading only that stretch."""
        if self.series is None or self.series_offset == self.checkpoint.offset:
            return
        if self.series_offset < self.checkpoint.offset:
            log.info("series behind: counting data1 %d -> %d into it",
                     self.series_offset, self.checkpoint.offset)
            self._count(self.series_offset, self.checkpoint.offset, counts=False)
        else:
            log.info("data2 behind: counting data1 %d -> %d into it",
                     self.checkpoint.offset, self.series_offset)
            self._count(self.checkpoint.offset, self.series_offset, series=False)

    def rebuild(self, progress=None):
        """Recount all of data1 from offset 0 into data2 and the series store, ignoring what
        they held.

        Commits exactly as a pass does (atomically, every COMMIT_EVERY bytes and at the end),
        so both are consistent at every instant, even if the rebuild is interrupted.
        Raises AlreadyLocked if a worker is running.
        """
        hold_exclusive_lock(self.layout.worker_lock)
        self.data1 = LogReader(self.layout.data1)
        self.checkpoint = Checkpoint()
        if self.series is not None:
            try:
                self.series.open(EMPTY_FINGERPRINT)
                self.series.reset(EMPTY_FINGERPRINT)
            except CorruptSeries as problem:
                self.start_series_over(f"series.sqlite3 is unusable: {problem}")
            self.series_offset = 0
        if self.overview is not None:
            self.overview.rebuild()
        self.run_pass(progress)
        if self.checkpoint.offset == 0:  # an empty data1: its checkpoint is empty counts
            self.checkpoint = self.store.commit(self.checkpoint)
        self.close()
        return self.checkpoint

    def run_pass(self, progress=None):
        """Count what data1 gained since the last commit and commit it. Returns events counted.

        `progress`, if given, is called after each block with (offset reached, tokens read).
        """
        started = time.monotonic()
        self._check_data1()
        start_offset = self.checkpoint.offset
        tally = self._count(start_offset, None, progress=progress)
        if self.checkpoint.offset > start_offset:
            log.info(
                "pass: counted %s (%d skipped) in %.3fs; offset %d -> %d; lag %d bytes",
                plural(tally.events, "event"), tally.skipped, time.monotonic() - started,
                start_offset, self.checkpoint.offset,
                self.data1.size() - self.checkpoint.offset,
            )
        if self.overview is not None and not (self.signals and self.signals.stop):
            # data2 claims data1 up to its offset: durable there, as the overview needs.
            # A running worker gives the overview about an interval (see the module's
            # docstring); a rebuild, or a pass called on its own, counts it all.
            until = None if self.interval is None else time.monotonic() + self.interval
            self.overview_behind = not self.overview.advance(self.checkpoint.offset, until)
        return tally.events

    def catching_up(self):
        return self.overview_behind

    def _count(self, start, end, counts=True, series=True, progress=None):
        """Read data1[start:end] (to its last complete token when end is None) and commit it
        to data2 (`counts`) and to the series store (`series`, if it is on), every
        COMMIT_EVERY bytes and at the end. Returns the Tally."""
        series = series and self.series is not None
        tally = Tally()
        committed = reached = start
        for block, reached in self.data1.blocks(start, self.chunk_size, end):
            if self.stop_requested():
                # Both views still hold consistent commits: the next worker counts on.
                return tally
            self._add(tally, block, reached, series)
            if reached - committed >= COMMIT_EVERY or tally.pending_pairs >= COMMIT_PAIRS:
                self._commit(tally, committed, reached, counts, series)
                committed = reached
            if progress:
                progress(reached, tally.seen)
        if reached > committed:
            self._commit(tally, committed, reached, counts, series)
        return tally

    def _add(self, tally, block, end, dated):
        """Add a block (data1[end - len(block):end]) to the tally; with `dated`, each part
        in the minute its time index gives it."""
        if not dated:
            tally.add(block)
            return
        start = end - len(block)
        spans = self.time_index.spans(start, end)
        if not spans:
            if not self._undated_logged:
                log.warning("data1 has no time index: events with no time are dated "
                            "1970-01-01T00:00:00Z in the series (their counts are exact)")
                self._undated_logged = True
            spans = [(start, EPOCH)]
        cut = 0
        for index, (offset, second) in enumerate(spans):
            following = spans[index + 1][0] - start if index + 1 < len(spans) else len(block)
            # Entries point at the start of a record; should one point inside a token (a
            # damaged index), the cut moves to the token's end: time never splits a token.
            while 0 < following < len(block) and not block[following - 1:following].isspace():
                following += 1
            if following > cut:
                tally.add(block[cut:following], second - second % 60)
                cut = following

    def _commit(self, tally, start, end, counts, series):
        # The pointer must never get ahead of the data: data1's bytes up to the new offset
        # are made durable before a commit that claims them is.
        self.data1.make_durable()
        if tally.pending_invalid():
            self._read_again(tally, start, end, series)
        fingerprint = self.data1.fingerprint(end)
        # The counts dict is extended in place rather than copied: a copy of a million-entry
        # dict per commit would cost more than the commit. Should the commit fail, the
        # process exits and its in-memory state goes with it.
        totals = self.checkpoint.counts if counts else {}
        projects = self.checkpoint.projects if counts else {}
        skipped, samples, minute_rows, hour_rows = tally.drain_into(totals, projects)
        report_skipped(skipped, samples)
        if series:
            self.series.commit(minute_rows, hour_rows, end, fingerprint)
            self.series_offset = end
        if counts:
            self.checkpoint = self.store.commit(dataclasses.replace(
                self.checkpoint,
                offset=end,
                counts=totals,
                projects=projects,
                skipped=self.checkpoint.skipped + skipped,
                fingerprint=fingerprint,
            ))

    def _read_again(self, tally, start, end, dated):
        """Count data1[start:end] again from what is durably there, before skipping
        anything in it for good.

        A reader racing the writer has been seen (on a FUSE file system) to read NUL bytes
        where acknowledged ids were being written. Those would be skipped as one invalid
        token and lost for good once committed. Read after the fdatasync above, the bytes
        are the ones on disk: what is still not an id really is garbage.
        """
        tally.discard_pending()
        for block, reached in self.data1.blocks(start, self.chunk_size, end):
            self._add(tally, block, reached, dated)

    def _check_data1(self):
        """Notice a data1 that was replaced, truncated or rewritten since the last pass."""
        if self.data1.replaced():
            log.warning("data1 was replaced or removed; reopening %s", self.layout.data1)
            self.data1.open()
        problem = self.data1.mismatch(self.checkpoint.offset, self.checkpoint.fingerprint)
        if problem:
            self.start_over(problem)
            if self.series is not None:
                # Between passes the two views stand at the same offset: what no longer
                # matches data2 no longer matches the series either.
                self.start_series_over(problem)
