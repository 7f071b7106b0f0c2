"""The worker's run loop: recover, then one pass now and one every interval.

A pass reads data1 from the checkpoint's offset (storage/log_reader.py), counts the complete
tokens (worker/tally.py), and commits offset and counts together (storage/checkpoint_store.py).
Recovery needs no special case: whatever instant the previous worker died at, data2 is either
the old checkpoint or the new one, each consistent with data1, and the next pass simply starts
from its offset. Anything in data2 that cannot be trusted is moved aside and data1 is counted
again from offset 0, which is exact because data1 holds every acknowledged event.
"""

import dataclasses
import logging
import os
import select
import signal
import time

from storage.checkpoint import Checkpoint, CorruptCheckpoint
from storage.checkpoint_store import CheckpointStore
from storage.layout import Layout
from storage.lockfile import hold_exclusive_lock
from storage.log_reader import CHUNK_SIZE, LogReader
from worker.tally import Tally

log = logging.getLogger("worker")

# During a long catch-up, commit every this many bytes of data1, so that a crash replays
# little and a restart shows progress.
COMMIT_EVERY = 32 * 1024 * 1024


def plural(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class StopSignal:
    """SIGTERM and SIGINT ask the worker to stop; wait() wakes up as soon as one arrives.

    The handler only sets a flag, so a signal can never interrupt a commit half way. The
    wakeup pipe is there because Python retries an interrupted sleep or select (PEP 475):
    without it, a stop would wait out the whole interval.
    """

    def __init__(self):
        self.requested = False
        self._wakeup, write_end = os.pipe()
        os.set_blocking(self._wakeup, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end)
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def wait(self, seconds):
        """Sleep up to `seconds`; True if a stop was requested."""
        if not self.requested:
            readable, _, _ = select.select([self._wakeup], [], [], seconds)
            if readable:
                os.read(self._wakeup, 512)  # drained, so the next wait sleeps again
        return self.requested


class Worker:
    def __init__(self, state_dir, chunk_size=None):
        self.layout = Layout(state_dir)
        self.store = CheckpointStore(state_dir)
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.data1 = None
        self.checkpoint = Checkpoint()
        self.stop = None

    def run(self, interval):
        """Hold the worker lock and run passes until SIGTERM/SIGINT. Raises AlreadyLocked."""
        hold_exclusive_lock(self.layout.worker_lock)  # the kernel releases it however we exit
        self.stop = StopSignal()
        self.recover()
        while not self.stop.requested:
            self.run_pass()
            if self.stop.wait(interval):
                break
        log.info("worker stopped at offset %d", self.checkpoint.offset)
        self.close()

    def close(self):
        if self.data1 is not None:
            self.data1.close()
            self.data1 = None

    def recover(self):
        """Load data2 and check it against data1; start over from 0 if it cannot be used."""
        self.data1 = LogReader(self.layout.data1)
        stray = self.store.remove_stray_temp()
        if stray:
            log.info("removed %s left by an interrupted commit; it was never used", stray)
        try:
            loaded = self.store.load()
        except CorruptCheckpoint as problem:
            self.start_over(f"data2 is unreadable: {problem}")
            return
        if loaded is None:
            log.info("no checkpoint yet: counting data1 from offset 0")
            self.checkpoint = Checkpoint()
            return
        self.checkpoint = loaded
        problem = self.data1.mismatch(loaded.offset, loaded.fingerprint)
        if problem:
            self.start_over(problem)
            return
        log.info(
            "resuming from checkpoint: offset %d, %d events, %d experiences, %d skipped",
            loaded.offset, loaded.events, len(loaded.counts), loaded.skipped,
        )

    def start_over(self, reason):
        """Never continue silently from a wrong state: keep the bad data2 aside, recount."""
        aside = self.store.set_aside()
        log.error(
            "CHECKPOINT REJECTED: %s; moved it aside to %s; recounting data1 from offset 0",
            reason, aside,
        )
        self.checkpoint = Checkpoint()

    def rebuild(self, progress=None):
        """Recount all of data1 from offset 0 into data2, ignoring the checkpoint there.

        Commits exactly as a pass does (atomically, every COMMIT_EVERY bytes and at the end),
        so data2 is consistent at every instant, even if the rebuild is interrupted.
        Raises AlreadyLocked if a worker is running.
        """
        hold_exclusive_lock(self.layout.worker_lock)
        self.data1 = LogReader(self.layout.data1)
        self.checkpoint = Checkpoint()
        self.run_pass(progress)
        if self.checkpoint.offset == 0:  # an empty data1: its checkpoint is empty counts
            self.checkpoint = self.store.commit(self.checkpoint)
        self.close()
        return self.checkpoint

    def run_pass(self, progress=None):
        """Count what data1 gained since the checkpoint and commit it. Returns events counted.

        `progress`, if given, is called after each block with (offset reached, tokens read).
        """
        started = time.monotonic()
        self._check_data1()
        start_offset = self.checkpoint.offset
        tally = Tally()
        end = start_offset
        for block, end in self.data1.blocks(start_offset, self.chunk_size):
            if self.stop and self.stop.requested:
                # Drop the uncommitted part of the pass; data2 still holds a consistent
                # checkpoint and the next worker counts on from there.
                log.info("stop requested mid-pass; uncommitted work is dropped")
                return tally.events
            tally.add(block)
            if end - self.checkpoint.offset >= COMMIT_EVERY:
                self._commit(tally, end)
            if progress:
                progress(end, tally.seen)
        if end > self.checkpoint.offset:
            self._commit(tally, end)
        if self.checkpoint.offset > start_offset:
            log.info(
                "pass: counted %s (%d skipped) in %.3fs; offset %d -> %d; lag %d bytes",
                plural(tally.events, "event"), tally.skipped, time.monotonic() - started,
                start_offset, self.checkpoint.offset,
                self.data1.size() - self.checkpoint.offset,
            )
        return tally.events

    def _commit(self, tally, end):
        # The pointer must never get ahead of the data: data1's bytes up to the new offset
        # are made durable before a checkpoint that claims them is.
        self.data1.make_durable()
        if tally.pending_invalid():
            self._read_again(tally, end)
        # The counts dict is extended in place rather than copied: a copy of a million-entry
        # dict per commit would cost more than the commit. Should the commit fail, the
        # process exits and its in-memory state goes with it.
        counts = self.checkpoint.counts
        skipped, samples = tally.drain_into(counts)
        if skipped:
            log.warning(
                "skipped %s that %s not experience ids, e.g. %s",
                plural(skipped, "token"), "is" if skipped == 1 else "are",
                ", ".join(repr(token) for token in samples),
            )
        self.checkpoint = self.store.commit(dataclasses.replace(
            self.checkpoint,
            offset=end,
            counts=counts,
            skipped=self.checkpoint.skipped + skipped,
            fingerprint=self.data1.fingerprint(end),
        ))

    def _read_again(self, tally, end):
        """Count [checkpoint offset, end) again from what is durably there, before skipping
        anything in it for good.

        A reader racing the writer has been seen (on a FUSE file system) to read NUL bytes
        where acknowledged ids were being written. Those would be skipped as one invalid
        token and lost for good once committed. Read after the fdatasync above, the bytes
        are the ones on disk: what is still not an id really is garbage.
        """
        tally.discard_pending()
        for block, _ in self.data1.blocks(self.checkpoint.offset, self.chunk_size, end):
            tally.add(block)

    def _check_data1(self):
        """Notice a data1 that was replaced, truncated or rewritten since the last pass."""
        if self.data1.replaced():
            log.warning("data1 was replaced or removed; reopening %s", self.layout.data1)
            self.data1.open()
        problem = self.data1.mismatch(self.checkpoint.offset, self.checkpoint.fingerprint)
        if problem:
            self.start_over(problem)
