"""The writer of data1: appends records, and acknowledges them only once they are durable.

The format is in storage/log_format.py. This module's guarantees:

* Each append is one os.write on an O_APPEND descriptor under one lock, so records from
  concurrent requests never interleave or tear one another.
* A failed or short write is undone (truncated back) before the error is reported, so the
  next record never glues onto half of a failed one.
* With durability on, append() returns only after an fdatasync that covers the bytes it
  wrote. Concurrent appends share syncs (group commit, as LevelDB's DBImpl::Write): the
  first append to need a sync leads; while its fdatasync runs (the GIL released), the
  others write and queue, each on a lock of its own. When the sync is done, the leader wakes
  each append it covered, once, and hands the lead to the first one still waiting, whose
  sync covers everything written meanwhile. No append waits on a lock shared with the others
  (a convoy: each woken in turn only to find its bytes already synced).
* An fsync or truncate that fails is fatal: after a failed fsync the kernel may already have
  dropped the dirty pages, so retrying could report success for lost data. The process exits
  and, on restart, recovery works from what is really on disk.
* Opening the log removes a torn tail left by a crash mid-write (never acknowledged).
* With a time index (storage/time_index.py), each append is dated: a new second's entry is
  written before the records it dates, and made durable with them before append() returns,
  so an acknowledged event's time is as durable as the event.
* With a details file (storage/details.py), append_events() keeps each SDK event's details:
  the group is written before the data1 bytes it describes, under the same lock, and made
  durable by the same sync, before append_events() returns; a failed write undoes both.
* With a dedupe index (storage/seen_index.py), an SDK event whose id was accepted within the
  window is neither written nor counted again. The check and the claim of new ids happen
  under the write lock, so two requests carrying the same id at once store it once; and an
  append that found only repeats still waits for the sync covering the first delivery, so
  a repeat is never acknowledged before the event it repeats is durable.
"""

import _thread
import logging
import os
import threading
import time
import zlib
from pathlib import Path

from storage.details import DetailsWriter, encode_group
from storage.durable import ShortWrite, append_whole
from storage.layout import Layout, names_open_file
from storage.log_format import last_separator
from storage.process import die
from storage.seen_index import SeenIndex
from storage.time_index import TimeIndexWriter

log = logging.getLogger("ingest")

_SCAN_BLOCK = 64 * 1024
# How long a sync waits for other appends while others are writing (see _lead). Measured
# with 16 connections of single events, as fsync on's throughput over fsync off's: no wait
# 0.53, 0.1 ms 0.62, 0.3 ms 0.68, 0.4 ms 0.73, 0.6 ms 0.75, 0.8 ms 0.67, 1.2 ms 0.52. Longer
# waits hold the whole group back for appends that are not coming.
COMMIT_DELAY = 0.0005
MIN_FREE_BYTES = 1024 * 1024


class AppendError(Exception):
    """The append failed and was undone: nothing of it is in data1."""


class _Waiter:
    """An append waiting for a sync: `woken` is held until the leader releases it, once, with
    `role` set: "covered" (its bytes are durable) or "lead" (it syncs next)."""

    __slots__ = ("end", "details_end", "woken", "role")

    def __init__(self, end, details_end):
        self.end, self.details_end, self.role = end, details_end, None
        self.woken = _thread.allocate_lock()
        self.woken.acquire()


class EventLog:
    def __init__(self, path, durable=True, time_index=None, clock=time.time, details=None,
                 seen=None, dedupe_window=24 * 3600, set_aside=None):
        """`time_index`, `details`, `seen`: the paths of data1's time index, details file and
        dedupe index, or None to keep none (`seen` needs `details`). `set_aside(path)`
        names where a rejected details file or index is kept."""
        self.path = path
        self.durable = durable
        self._clock = clock
        # O_RDWR, not O_WRONLY: recovery reads the tail back with pread.
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._write_lock = threading.Lock()
        # The group commit's state: who leads, and the appends waiting for a sync (see
        # _sync_through). Held only for a few list operations, never across a sync.
        self._sync_state = threading.Lock()
        self._leading = False
        self._last_group = 1  # appends the last sync covered
        self._waiting = []  # _Waiters, in the order they came
        self._end = self._remove_torn_tail()  # bytes written so far; only ever grows
        self._synced = self._end  # bytes known durable
        self._index = None
        if time_index is not None:
            # Opened after the torn-tail repair: entries past the repaired end are dropped.
            self._index = TimeIndexWriter(time_index, self._end, os.fstat(self._fd).st_mtime)
        self._details = self._seen = None
        set_aside = set_aside or Layout(Path(path).parent).set_aside
        if details is not None:
            self._details = DetailsWriter(Path(details), self._fd, self._end, set_aside)
            if seen is not None and dedupe_window:
                self._seen = SeenIndex(Path(seen), self._details, dedupe_window, set_aside,
                                       clock)
        # The details end a sync may cover: only groups whose ids the dedupe index has bound.
        self._details_end = self._details_synced = self._details.end if self._details else 0

    def close(self):
        if self._seen:
            self._seen.close()
        os.close(self._fd)
        if self._index:
            self._index.close()
        if self._details:
            self._details.close()

    @property
    def size(self):
        return self._end

    def fileno(self):
        return self._fd

    def append(self, records):
        """Append `records` (complete records, see log_format.encode) as one write.

        Returns once the bytes are durable (when durability is on). Raises AppendError if
        the write failed; nothing of it is then left in data1.
        """
        with self._write_lock:
            self._write(records)
            end = self._end
        if self.durable:
            self._sync_through(end, 0)

    def append_events(self, ids, events, received, sent=None):
        """Append minimal items' `ids` and SDK events (validate.SdkEvent) received at
        `received` (Unix seconds): the screen views' ids to data1, every new event's details
        to the details file. Returns, for each event, True if it was new, False if it
        repeats one accepted within the dedupe window (written and counted once, before).
        `sent`: the request body, when its batch is exactly `events`: if they are all new,
        the details keep it as it came (storage/details.py) rather than encode them again.

        Returns once all of it, and every event it repeats, is durable. Raises AppendError
        if a write failed; nothing of the request is then written.
        """
        with self._write_lock:
            fresh = self._seen.claim(events, received) if self._seen else [True] * len(events)
            try:
                self._write_events(ids, events, fresh, received, sent)
            except AppendError:
                if self._seen:
                    self._seen.unclaim()
                raise
            end, details_end = self._end, self._details_end
        if self.durable:
            self._sync_through(end, details_end)
        elif self._seen:
            self._seen.note_synced(details_end)
        return fresh

    def _write_events(self, ids, events, fresh, received, sent):
        tokens = [str(value).encode() for value in ids]
        offset = self._end + sum(len(token) + 1 for token in tokens)
        kept = []
        for event, new in zip(events, fresh):
            if not new:
                continue
            item = event.details
            if event.experience_id is not None:
                token = str(event.experience_id).encode()
                item = {**item, "offset": offset}
                offset += len(token) + 1
                tokens.append(token)
            kept.append(item)
        records = b" ".join(tokens) + b" " if tokens else b""
        if kept:
            if self._details is None:
                raise AppendError("this ingest keeps no details file")
            group = encode_group(self._end, self._end + len(records), zlib.crc32(records),
                                 int(received * 1000), kept,
                                 sent if len(kept) == len(events) and not ids else None)
            try:
                self._details.append(group)
            except OSError as error:
                raise AppendError(f"writing data1.details failed: {error}") from error
        if records:
            try:
                self._write(records)
            except AppendError:
                if kept:
                    self._details.take_back(len(group))
                raise
        if kept:
            if self._seen:
                self._seen.bind(self._details.end)
            self._details_end = self._details.end

    def _write(self, records):
        """Write `records` to data1 (and date them), holding the write lock."""
        if self._index:
            try:
                self._index.note(int(self._clock()), self._end)
            except OSError as error:  # before any of the records is written
                raise AppendError(f"writing data1's time index failed: {error.strerror}")
        try:
            append_whole(self._fd, records, self._end, "data1", log)
        except ShortWrite as short:
            raise AppendError(str(short)) from None
        except OSError as error:
            raise AppendError(f"writing data1 failed: {error.strerror}") from error
        self._end += len(records)

    def problem(self):
        """Why an append would fail now, or None if data1 looks writable."""
        if not names_open_file(self.path, self._fd):
            return "data1 was replaced or removed under the ingest; restart it"
        space = os.statvfs(self._fd)
        free = space.f_bavail * space.f_frsize
        if free < MIN_FREE_BYTES:
            return f"only {free} bytes free on data1's file system"
        return None

    def sync(self):
        """Make everything appended so far durable."""
        self._sync_through(self._end, self._details_end)

    def _sync_through(self, end, details_end):
        """Return once data1 is durable up to `end` and data1.details up to `details_end`."""
        with self._sync_state:
            if self._synced >= end and self._details_synced >= details_end:
                return  # a sync that started after our write already covered it
            if self._leading:
                waiter = _Waiter(end, details_end)
                self._waiting.append(waiter)
            else:
                self._leading, waiter = True, None
        if waiter is not None:
            waiter.woken.acquire()  # released once, by the leader of the sync that covered us
            if waiter.role == "covered":  # (or that hands us the lead)
                return
        self._lead()

    def _lead(self):
        """Sync everything written so far; wake the appends it covered; hand the lead on to
        the first still waiting (written during the sync), or give it up."""
        try:
            self._sync_and_wake()
        except Exception as error:
            # Never expected (a failed sync already ends the process); but a lead that ended
            # here would leave every later append waiting for a sync that never comes.
            die(log, f"the group commit failed: {error!r}")

    def _sync_and_wake(self):
        if self._last_group > 1:
            # Others are writing too (PostgreSQL's commit_delay and commit_siblings): let
            # them write before the sync rather than after it. The sleep releases the GIL;
            # the requests being parsed write, queue behind this lead and block, and one
            # sync covers them all instead of one each.
            time.sleep(COMMIT_DELAY)
        # Everything below _end has been written (it is raised after each write), and only
        # bound details groups are below _details_end: one sync covers them all.
        target, details_target = self._end, self._details_end
        # Read after target: the entries dating every byte below target were written
        # before those bytes were, so they are all counted here.
        entries = self._index.written if self._index else 0
        if target > self._synced:
            try:
                os.fdatasync(self._fd)
            except OSError as error:
                die(log, f"fdatasync of data1 failed: {error}")
        if details_target > self._details_synced:
            try:
                self._details.sync()
            except OSError as error:
                die(log, f"fdatasync of data1.details failed: {error}")
        if entries > (self._index.synced if self._index else 0):
            # At most once a second: a new entry is written at most once a second.
            try:
                self._index.sync()
            except OSError as error:
                die(log, f"fdatasync of data1's time index failed: {error}")
            self._index.synced = entries
        if self._seen:
            self._seen.note_synced(details_target)
        with self._sync_state:
            self._synced, self._details_synced = target, details_target
            still, covered = [], 1
            for waiter in self._waiting:
                if waiter.end <= target and waiter.details_end <= details_target:
                    waiter.role = "covered"
                    waiter.woken.release()
                    covered += 1
                else:
                    still.append(waiter)
            self._waiting = still
            self._last_group = covered
            if still:
                successor = still.pop(0)
                successor.role = "lead"
                successor.woken.release()
            else:
                self._leading = False

    def _remove_torn_tail(self):
        size = os.fstat(self._fd).st_size
        keep = 0
        block_end = size
        while block_end > 0:
            block_start = max(0, block_end - _SCAN_BLOCK)
            block = os.pread(self._fd, block_end - block_start, block_start)
            cut = last_separator(block)
            if cut >= 0:
                keep = block_start + cut + 1
                break
            block_end = block_start
        if keep < size:
            log.warning(
                "data1: removing a torn tail of %d bytes at offset %d "
                "(left by a crash mid-write; it was never acknowledged)",
                size - keep,
                keep,
            )
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
        return keep
