"""The worker's run loop: recover, then one pass now and one every interval.

A pass reads data1 from the checkpoint's offset (worker/tailer.py), counts the complete
tokens, and commits offset and counts together (worker/checkpoint.py). Recovery needs no
special case: whatever instant the previous worker died at, data2 is either the old
checkpoint or the new one, each consistent with data1, and the next pass simply starts from
its offset. Anything in data2 that cannot be trusted is moved aside and data1 is counted
again from offset 0, which is exact because data1 holds every acknowledged event.
"""

import datetime
import logging
import os
import select
import signal
import time

from app.lockfile import hold_exclusive_lock
from app.log_format import DATA1, names_open_file
from worker import checkpoint
from worker.checkpoint import DATA2, TEMP_SUFFIX, Checkpoint, CorruptCheckpoint
from worker.tailer import CHUNK_SIZE, Tally, complete_blocks

log = logging.getLogger("worker")

# During a long catch-up, commit every this many bytes of data1, so that a crash replays
# little and a restart shows progress.
COMMIT_EVERY = 32 * 1024 * 1024

LOCK_FILE = "worker.lock"


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
        self.data1_path = os.path.join(state_dir, DATA1)
        self.data2_path = os.path.join(state_dir, DATA2)
        self.lock_path = os.path.join(state_dir, LOCK_FILE)
        self.chunk_size = chunk_size
        self.data1_fd = None
        self.checkpoint = Checkpoint()
        self.stop = None

    def run(self, interval):
        """Hold the worker lock and run passes until SIGTERM/SIGINT. Raises AlreadyLocked."""
        hold_exclusive_lock(self.lock_path)  # the kernel releases it however we exit
        self.stop = StopSignal()
        self.recover()
        while not self.stop.requested:
            self.run_pass()
            if self.stop.wait(interval):
                break
        log.info("worker stopped at offset %d", self.checkpoint.offset)
        self.close()

    def close(self):
        if self.data1_fd is not None:
            os.close(self.data1_fd)
            self.data1_fd = None

    def recover(self):
        """Load data2 and check it against data1; start over from 0 if it cannot be used."""
        self._open_data1()
        temp = self.data2_path + TEMP_SUFFIX
        if os.path.exists(temp):
            # Left by a crash before the rename: never part of any checkpoint.
            log.info("removing %s left by an interrupted commit; it was never used", temp)
            os.unlink(temp)
        try:
            loaded = checkpoint.load(self.data2_path)
        except CorruptCheckpoint as problem:
            self.start_over(f"data2 is unreadable: {problem}")
            return
        if loaded is None:
            log.info("no checkpoint yet: counting data1 from offset 0")
            self.checkpoint = Checkpoint()
            return
        self.checkpoint = loaded
        problem = checkpoint.mismatch(loaded, self.data1_fd)
        if problem:
            self.start_over(problem)
            return
        log.info(
            "resuming from checkpoint: offset %d, %d events, %d experiences, %d skipped",
            loaded.offset, loaded.events, len(loaded.counts), loaded.skipped,
        )

    def start_over(self, reason):
        """Never continue silently from a wrong state: keep the bad data2 aside, recount."""
        aside = None
        if os.path.exists(self.data2_path):
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = f"{self.data2_path}.bad-{stamp}"
            os.replace(self.data2_path, aside)
            checkpoint.fsync_directory(os.path.dirname(self.data2_path))
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
        hold_exclusive_lock(self.lock_path)
        self._open_data1()
        self.checkpoint = Checkpoint()
        self.run_pass(progress)
        if self.checkpoint.offset == 0:  # an empty data1: its checkpoint is empty counts
            checkpoint.commit(self.data2_path, self.checkpoint, self.data1_fd)
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
        blocks = complete_blocks(self.data1_fd, start_offset, self.chunk_size or CHUNK_SIZE)
        for block, end in blocks:
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
                "pass: counted %d events (%d skipped) in %.3fs; offset %d -> %d; lag %d bytes",
                tally.events, tally.skipped, time.monotonic() - started, start_offset,
                self.checkpoint.offset, os.fstat(self.data1_fd).st_size - self.checkpoint.offset,
            )
        return tally.events

    def _commit(self, tally, end):
        skipped, samples = tally.drain_into(self.checkpoint.counts)
        if skipped:
            log.warning(
                "skipped %d tokens that are not experience ids, e.g. %s",
                skipped, ", ".join(repr(token) for token in samples),
            )
        self.checkpoint.skipped += skipped
        self.checkpoint.offset = end
        checkpoint.commit(self.data2_path, self.checkpoint, self.data1_fd)

    def _open_data1(self):
        if self.data1_fd is not None:
            os.close(self.data1_fd)
        # O_CREAT: the worker may start before the ingest has written anything.
        self.data1_fd = os.open(self.data1_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _check_data1(self):
        """Notice a data1 that was replaced, truncated or rewritten since the last pass."""
        if not names_open_file(self.data1_path, self.data1_fd):
            log.warning("data1 was replaced or removed; reopening %s", self.data1_path)
            self._open_data1()
        problem = checkpoint.mismatch(self.checkpoint, self.data1_fd)
        if problem:
            self.start_over(problem)
