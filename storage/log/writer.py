"""The writer of data1: appends records, and acknowledges them only once they are durable.

The format is in storage/log/format.py. This module's guarantees:

* Each append is one os.write on an O_APPEND descriptor under one lock, so records from
  concurrent requests never interleave or tear one another.
* A failed or short write is undone (truncated back) before the error is reported, so the
  next record never glues onto half of a failed one.
* With durability on, an append is acknowledged only once an fdatasync covers the bytes it
  wrote. One sync thread makes them durable for everyone (group commit): it syncs whatever
  was written when it starts, and while it syncs (the GIL released) the next appends are
  parsed and written, so the sync after covers them all. An append either waits (append()
  returns once durable) or, given `hold`, returns at once and hands hold() its Ticket: the
  HTTP server then holds the request's answer back until the ticket is durable, and sends it
  after the sync, its thread already free for the next request (app/__main__.py's Channel).
  No request thread ever blocks on a lock shared with others (a convoy), and one that waits
  is woken once, by the sync that covered it. `on_durable` is called after every sync; a
  sync that takes longer than SYNC_STALLED_AFTER is a problem() (writes are then refused).
* An fsync or truncate that fails is fatal: after a failed fsync the kernel may already have
  dropped the dirty pages, so retrying could report success for lost data. The process exits
  and, on restart, recovery works from what is really on disk.
* Opening the log repairs what a crash or a power loss left, none of it acknowledged: a
  torn tail, and details groups whose data1 bytes were lost or torn, with data1 cut back
  to where those bytes began, durably, before the groups are removed (storage/log/details.py).
* With a time index (storage/log/time_index.py), each append is dated: a new second's entry is
  written before the records it dates, and made durable with them before the append is
  acknowledged, so an acknowledged event's time is as durable as the event.
* With a details file (storage/log/details.py), append_events() keeps each SDK event's details,
  and data1's bytes are never durable before their details, whatever a power loss keeps:
  an append writes its details group under the write lock, and queues its data1 bytes; the
  sync thread syncs the details, then writes the queued bytes to data1 (one write, at most
  MAX_UNSYNCED bytes), then syncs data1, and only then is the append acknowledged. No
  writeback, and no other process's fdatasync of data1 (the worker's), can put data1's
  bytes on disk ahead of their details, because until their details are durable those
  bytes are not in the file at all. A failed details write is undone and answered as an
  error; a failed data1 write, made after the request's thread went on, ends the process
  like a failed fsync: nothing of it was acknowledged, and recovery removes what it left.
* With a dedupe index (storage/log/seen_index.py), an SDK event whose id was accepted within the
  window is neither written nor counted again. The check and the claim of new ids happen
  under the write lock, so two requests carrying the same id at once store it once; and an
  append that found only repeats still waits for the sync covering the first delivery, so
  a repeat is never acknowledged before the event it repeats is durable.
"""

import _thread
import collections
import logging
import os
import threading
import time
import zlib
from pathlib import Path

from storage.backend import AppendError
from storage.durable import ShortWrite, append_whole
from storage.layout import Layout, names_open_file
from storage.log import counted
from storage.log.details import DetailsWriter, encode_group
from storage.log.format import MAX_UNSYNCED, last_separator
from storage.log.seen_index import SeenIndex
from storage.log.time_index import TimeIndexWriter
from storage.process import die

log = logging.getLogger("ingest")

_SCAN_BLOCK = 64 * 1024
# How long the sync thread lets appends gather before a sync, while requests keep arriving
# (see _sync_forever). An fdatasync can take less than the CPU one request costs (about
# 0.1 ms on the bench machine): without a pause nearly every sync would cover one append.
# Measured with 16 connections of single events on threads without SCHED_BATCH: appends a
# sync / requests a second: no pause 2 / 6,200; 0.2 ms 3 / 6,900; 0.5 ms 5.5 / 7,700; 1 ms
# 8.7 / 8,450. Under SCHED_BATCH (storage/process.py) the sync thread runs only once the
# request threads block, and every sync covers all 16 whatever the pause.
COMMIT_DELAY = 0.001
MIN_FREE_BYTES = 1024 * 1024
# A sync still not done after this long means a stalled (or failing) disk: problem() says so,
# and the ingest refuses writes (503, Retry-After) rather than take them and hold their
# answers for a sync that may never finish.
SYNC_STALLED_AFTER = 5.0
SIZE_UNKNOWN = ("data1's file system reports no size (statfs gives 0 blocks, as some FUSE "
                "file systems do): its free space is not checked")


class Ticket:
    """Where an append ends in data1 and data1.details: durable() once a sync covers both."""

    __slots__ = ("_log", "end", "details_end")

    def __init__(self, log, end, details_end):
        self._log, self.end, self.details_end = log, end, details_end

    def durable(self):
        return self._log._synced >= self.end and self._log._details_synced >= self.details_end


class _Waiter:
    """An append waiting for a sync: `woken` is held until the sync covering `ticket` is done,
    then released once by the sync thread."""

    __slots__ = ("ticket", "woken")

    def __init__(self, ticket):
        self.ticket = ticket
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
        # The group commit's state (see _sync_forever), held only for a few list operations,
        # never across a sync: the appends waiting for a sync, and whether the sync thread
        # is idle (blocked on _sync_wanted, which an append releases to wake it).
        self._sync_state = threading.Lock()
        self._waiting = []  # _Waiters, in the order they came
        self._sync_idle = False
        self._sync_wanted = _thread.allocate_lock()
        self._sync_wanted.acquire()
        self._closing = False
        self.on_durable = None  # called by the sync thread after each sync
        self._syncing_since = None  # when the sync in progress started (time.monotonic)
        self._size_unknown = False  # data1's file system reports no size (statfs)
        self._details = self._seen = None
        # Recovery: how much of data1 holds only what may have been acknowledged.
        size = kept = os.fstat(self._fd).st_size
        set_aside = set_aside or Layout(Path(path).parent).set_aside
        if details is not None:
            self._details = DetailsWriter(Path(details), self._fd, kept, set_aside)
            kept = self._details.data1_kept
        self._end = self._remove_torn_tail(size, kept)  # bytes taken so far; only ever grows
        if self._details is not None:
            self._details.remove_unheld()  # only now: data1's cut is durable first
        self._synced = self._end  # bytes known durable
        # With details, data1's bytes wait here (the sync thread writes them once their
        # details are durable): the records taken and not yet written, in order.
        self._unwritten = collections.deque() if durable and details is not None else None
        self._index = None
        if time_index is not None:
            # Opened after the torn-tail repair: entries past the repaired end are dropped.
            self._index = TimeIndexWriter(time_index, self._end, os.fstat(self._fd).st_mtime)
        if self._details is not None and seen is not None and dedupe_window:
            self._seen = SeenIndex(Path(seen), self._details, dedupe_window, set_aside, clock)
        # The details end a sync may cover: only groups whose ids the dedupe index has bound.
        self._details_end = self._details_synced = self._details.end if self._details else 0
        self._details_fsynced = 0  # the details' `appended` count at their last fdatasync
        self._sync_thread = None
        if durable:
            self._sync_thread = threading.Thread(target=self._sync_forever, daemon=True,
                                                 name="data1-sync")
            self._sync_thread.start()

    def close(self):
        if self._sync_thread:
            with self._sync_state:
                self._closing = True
                self._wake_sync_thread()
            self._sync_thread.join()
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

    def append(self, records, hold=None):
        """Append `records` (complete records, see log_format.encode) as one write.

        Returns once the bytes are durable (when durability is on), or at once after
        hold(ticket) if `hold` is given: the caller must then not acknowledge the append
        before ticket.durable(). Raises AppendError if the write failed; nothing of it is
        then left in data1.
        """
        with self._write_lock:
            self._write(records)
            ticket = Ticket(self, self._end, 0)
        if self.durable:
            self._await(ticket, hold)

    def append_events(self, ids, events, received, sent=None, hold=None, project=""):
        """Append minimal items' `ids` and SDK events (validate.SdkEvent) of `project`
        (storage/projects.py) received at `received` (Unix seconds): the screen views' ids to
        data1, every new event's details to the details file. Returns, for each event, True
        if it was new, False if it repeats one of the project's accepted within the dedupe
        window (written and counted once, before).
        `sent`: the request body, when its batch is exactly `events`: if they are all new,
        the details keep it as it came (storage/log/details.py) rather than encode them again.

        Returns once all of it, and every event it repeats, is durable; or, given `hold`, as
        append() does. Raises AppendError if a write failed; nothing of the request is then
        written.
        """
        with self._write_lock:
            fresh = (self._seen.claim(events, received, project) if self._seen
                     else [True] * len(events))
            try:
                self._write_events(ids, events, fresh, received, sent, project)
            except BaseException:
                # Whatever failed (an AppendError, or anything unforeseen), nothing of the
                # request was written: a claim kept would answer its retry as a duplicate
                # of an event never stored.
                if self._seen:
                    self._seen.unclaim()
                raise
            # Everything written so far: an append of repeats only waits for the sync that
            # covers the events it repeats.
            ticket = Ticket(self, self._end, self._details_end)
        if self.durable:
            self._await(ticket, hold)
        elif self._seen:
            self._seen.note_synced(ticket.details_end)
        return fresh

    def _write_events(self, ids, events, fresh, received, sent, project):
        prefix = f"{project}:" if project else ""
        tokens = [f"{prefix}{value}".encode() for value in ids]
        offset = self._end + sum(len(token) + 1 for token in tokens)
        # The body kept as it came when its batch is exactly these events, all new: their
        # items then go without the event (storage/log/details.py).
        whole = sent is not None and not ids and all(fresh)
        kept, kept_events = [], []
        for event, new in zip(events, fresh):
            if not new:
                continue
            kept_events.append(event)
            item = event.item if whole else event.details
            if event.experience_id is not None:
                token = f"{prefix}{event.experience_id}".encode()
                item = {**item, "offset": offset}
                offset += len(token) + 1
                tokens.append(token)
            kept.append(item)
        records = b" ".join(tokens) + b" " if tokens else b""
        if kept:
            if self._details is None:
                raise AppendError("this ingest keeps no details file")
            # The overview's columns of the same events, in the same group: it counts them
            # without decoding the events again (storage/log/counted.py).
            columns = counted.encode(project, kept_events)
            group = encode_group(self._end, self._end + len(records), zlib.crc32(records),
                                 int(received * 1000), kept, sent if whole else None,
                                 project, columns)
            try:
                self._details.append(group)
            except OSError as error:
                raise AppendError(f"writing data1.details failed: {error}") from error
        if records:
            try:
                self._write(records)
            except BaseException:
                if kept:
                    self._details.take_back(len(group))
                raise
        if kept:
            if self._seen:
                self._seen.bind(self._details.end)
            self._details_end = self._details.end

    def _write(self, records):
        """Write `records` to data1 (and date them), holding the write lock; or, with
        details, queue them for the sync thread to write once their details are durable."""
        if self._index:
            try:
                self._index.note(int(self._clock()), self._end)
            except OSError as error:  # before any of the records is written
                raise AppendError(f"writing data1's time index failed: {error.strerror}")
        if self._unwritten is not None:
            self._unwritten.append(records)
        else:
            try:
                append_whole(self._fd, records, self._end, "data1", log)
            except ShortWrite as short:
                raise AppendError(str(short)) from None
            except OSError as error:
                raise AppendError(f"writing data1 failed: {error.strerror}") from error
        self._end += len(records)

    def problem(self):
        """Why the ingest should take no write now, or None if data1 looks writable."""
        if not names_open_file(self.path, self._fd):
            return "data1 was replaced or removed under the ingest; restart it"
        space = os.statvfs(self._fd)
        free = space.f_bavail * space.f_frsize
        if space.f_blocks == 0:
            # Some FUSE file systems report no size at all: unknown is not full.
            if not self._size_unknown:
                log.warning(SIZE_UNKNOWN)
                self._size_unknown = True
        elif free < MIN_FREE_BYTES:
            return f"only {free} bytes free on data1's file system"
        since = self._syncing_since
        if since is not None and time.monotonic() - since > SYNC_STALLED_AFTER:
            return (f"data1's disk has not finished a sync in {time.monotonic() - since:.1f} s "
                    f"(more than {SYNC_STALLED_AFTER:g} s)")
        return None

    def notes(self):
        """What an operator should know that does not stop writes (for /healthz/ingest)."""
        return [SIZE_UNKNOWN] if self._size_unknown else []

    def sync(self):
        """Make everything appended so far durable."""
        with self._write_lock:
            ticket = Ticket(self, self._end, self._details_end)
        if self.durable:
            self._await(ticket, None)
        else:
            self._sync_once()

    def _await(self, ticket, hold):
        """Have the sync thread make `ticket` durable; hand it to `hold`, or wait for it."""
        if hold is not None:
            hold(ticket)
        with self._sync_state:
            if ticket.durable():
                return  # a sync that started after our write already covered it
            if hold is None:
                waiter = _Waiter(ticket)
                self._waiting.append(waiter)
            self._wake_sync_thread()
        if hold is None:
            waiter.woken.acquire()  # released once, by the sync that covered us

    def _wake_sync_thread(self):
        """Holding _sync_state."""
        if self._sync_idle:
            self._sync_idle = False
            self._sync_wanted.release()

    def _sync_forever(self):
        """The sync thread: sync what was written, wake who it covered, again. Sleeps while
        there is nothing to sync."""
        try:
            gathering = False
            while True:
                with self._sync_state:
                    idle = self._synced >= self._end and self._details_synced >= self._details_end
                    if self._closing and (idle or not self._waiting and not self._unwritten):
                        return
                    if idle:
                        self._sync_idle = True
                if idle:
                    self._sync_wanted.acquire()  # released by the next append (or close)
                    gathering = False
                    continue
                if gathering:
                    # Requests kept arriving during the last sync (PostgreSQL's commit_delay):
                    # let those being parsed write before this sync rather than after it. A
                    # lone append, woken from idle, is synced at once.
                    time.sleep(COMMIT_DELAY)
                self._sync_once()
                gathering = True
                if self.on_durable is not None:
                    self.on_durable()
        except Exception as error:
            # Never expected (a failed sync already ends the process); but a sync thread that
            # ended here would leave every later append waiting for a sync that never comes.
            die(log, f"the group commit failed: {error!r}")

    def _sync_once(self):
        """Sync everything written so far, and wake the appends it covered."""
        # Only bound details groups are below _details_end, and each group's data1 bytes
        # were queued (or written) before _details_end moved past it: read first, it names
        # groups whose bytes are all below the target taken next.
        details_target = self._details_end
        if self._unwritten is None:
            # Everything below _end has been written (it is raised after each write).
            target, records = self._end, None
        else:
            records = self._take_unwritten()
            target = self._synced + len(records)
        # Read after the records were taken: each of their groups was appended before them.
        details_written = self._details.appended if self._details else 0
        # Read after target: the entries dating every byte below target were written
        # before those bytes were, so they are all counted here.
        entries = self._index.written if self._index else 0
        self._syncing_since = time.monotonic()
        if details_written > self._details_fsynced:
            # Before data1's bytes are written: every group they belong to was written
            # before they were queued, so this sync makes all of them durable first. (A
            # round of minimal events only has no new group, and needs no such sync.)
            try:
                self._details.sync()
            except OSError as error:
                die(log, f"fdatasync of data1.details failed: {error}")
            self._details_fsynced = details_written
        if records:
            try:
                append_whole(self._fd, records, self._synced, "data1", log)
            except OSError as error:
                # The request's thread went on long ago: its answer can only be withheld.
                # Nothing of this write is acknowledged; recovery removes what it left.
                die(log, f"writing data1 failed: {error}")
        if target > self._synced:
            try:
                os.fdatasync(self._fd)
            except OSError as error:
                die(log, f"fdatasync of data1 failed: {error}")
        if entries > (self._index.synced if self._index else 0):
            # At most once a second: a new entry is written at most once a second.
            try:
                self._index.sync()
            except OSError as error:
                die(log, f"fdatasync of data1's time index failed: {error}")
            self._index.synced = entries
        self._syncing_since = None
        if self._seen:
            self._seen.note_synced(details_target)
        with self._sync_state:
            self._synced, self._details_synced = target, details_target
            still = []
            for waiter in self._waiting:
                if waiter.ticket.durable():
                    waiter.woken.release()
                else:
                    still.append(waiter)
            self._waiting = still

    def _take_unwritten(self):
        """The queued records, in order, up to MAX_UNSYNCED bytes (data1's format promises
        no more is ever written and not yet synced): the rest waits for the next sync."""
        taken, size, unwritten = [], 0, self._unwritten
        while unwritten and (not taken or size + len(unwritten[0]) <= MAX_UNSYNCED):
            records = unwritten.popleft()  # the only taker: appends only append
            taken.append(records)
            size += len(records)
        return b"".join(taken)

    def _remove_torn_tail(self, size, keep_at_most):
        """Cut data1 to `keep_at_most` bytes, then back to its last separator."""
        keep = 0
        block_end = keep_at_most
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
                "(left by a crash mid-write, or a power loss; it was never acknowledged)",
                size - keep,
                keep,
            )
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
        return keep
