"""The writer of data1: appends records, and acknowledges them only once they are durable.

The format is in storage/log_format.py. This module's guarantees:

* Each append is one os.write on an O_APPEND descriptor under one lock, so records from
  concurrent requests never interleave or tear one another.
* A failed or short write is undone (truncated back) before the error is reported, so the
  next record never glues onto half of a failed one.
* With durability on, append() returns only after an fdatasync that covers the bytes it
  wrote. Concurrent appends share syncs (group commit): one sync covers everything written
  before it started, and the appends it covered return without a sync of their own.
* An fsync or truncate that fails is fatal: after a failed fsync the kernel may already have
  dropped the dirty pages, so retrying could report success for lost data. The process exits
  and, on restart, recovery works from what is really on disk.
* Opening the log removes a torn tail left by a crash mid-write (never acknowledged).
* With a time index (storage/time_index.py), each append is dated: a new second's entry is
  written before the records it dates, and made durable with them before append() returns,
  so an acknowledged event's time is as durable as the event.
"""

import logging
import os
import threading
import time

from storage.layout import names_open_file
from storage.log_format import last_separator
from storage.process import die
from storage.time_index import TimeIndexWriter

log = logging.getLogger("ingest")

_SCAN_BLOCK = 64 * 1024
MIN_FREE_BYTES = 1024 * 1024


class AppendError(Exception):
    """The append failed and was undone: nothing of it is in data1."""


class EventLog:
    def __init__(self, path, durable=True, time_index=None, clock=time.time):
        """`time_index`: the path of data1's time index, or None to keep no time."""
        self.path = path
        self.durable = durable
        self._clock = clock
        # O_RDWR, not O_WRONLY: recovery reads the tail back with pread.
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._end = self._remove_torn_tail()  # bytes written so far; only ever grows
        self._synced = self._end  # bytes known durable
        self._index = None
        if time_index is not None:
            # Opened after the torn-tail repair: entries past the repaired end are dropped.
            self._index = TimeIndexWriter(time_index, self._end, os.fstat(self._fd).st_mtime)

    def close(self):
        os.close(self._fd)
        if self._index:
            self._index.close()

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
            if self._index:
                try:
                    self._index.note(int(self._clock()), self._end)
                except OSError as error:  # before any of the records is written
                    raise AppendError(f"writing data1's time index failed: {error.strerror}")
            try:
                written = os.write(self._fd, records)
            except OSError as error:
                self._undo_partial_write()
                raise AppendError(f"writing data1 failed: {error.strerror}") from error
            if written != len(records):
                self._undo_partial_write()
                raise AppendError(f"short write to data1 ({written} of {len(records)} bytes)")
            self._end += written
            end = self._end
        if self.durable:
            self._sync_through(end)

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
        self._sync_through(self._end)

    def _sync_through(self, end):
        with self._sync_lock:
            if self._synced >= end:
                return  # a sync that started after our write already covered it
            # Everything below _end has been written (it is raised after each write), so one
            # sync covers the appends of every request queued behind this lock too.
            target = self._end
            # Read after target: the entries dating every byte below target were written
            # before those bytes were, so they are all counted here.
            entries = self._index.written if self._index else 0
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
            self._synced = target

    def _undo_partial_write(self):
        # Called with the write lock held: _end is where our write started.
        try:
            os.ftruncate(self._fd, self._end)
        except OSError as error:
            die(log, f"could not truncate a failed write off data1: {error}")

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
