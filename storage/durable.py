"""Durable file replacement: write temp -> fsync temp -> rename over target -> fsync folder.

The sequence PostgreSQL's durable_rename and LevelDB's SetCurrentFile follow. Any OSError
propagates: after a failed fsync the kernel may have dropped the data, so the caller must not
retry; it exits and recovery starts from what is on disk.

And the append both logs' writers use (data1, data1.details): one write, undone if it fails.
"""

import os

from storage.layout import temp_path
from storage.process import die


class ShortWrite(OSError):
    """The kernel took only part of an append (which was then undone)."""


def append_whole(fd, data, end, name, log):
    """Append `data` to the O_APPEND file `fd`, `end` bytes long, in one os.write.

    Guarantee: on return all of `data` was written. If the write fails, or is short, the file
    is truncated back to `end` before the OSError (ShortWrite for a short write) is raised,
    so no part of `data` is left for the next append to glue onto. If that truncate fails,
    the process ends (process.die): the file's contents are no longer known."""
    try:
        written = os.write(fd, data)
    except OSError:
        truncate_or_die(fd, end, name, log)
        raise
    if written != len(data):
        truncate_or_die(fd, end, name, log)
        raise ShortWrite(f"short write to {name} ({written} of {len(data)} bytes)")


def truncate_or_die(fd, end, name, log):
    """Cut the file back to `end` bytes; end the process if that fails (its state unknown)."""
    try:
        os.ftruncate(fd, end)
    except OSError as error:
        die(log, f"could not truncate a failed write off {name}: {error}")


def write_all(fd, data):
    """Write all of `data` (bytes, or any buffer) at `fd`'s position: os.write may take only
    part of it, and is called again for the rest until none is left."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd, data, offset):
    """write_all at `offset`, leaving `fd`'s position alone."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def replace_durably(path, data):
    """Replace the file at `path` with `data`, atomically and durably.

    Guarantee: at any instant, including after a crash or power loss at any point inside this
    function, `path` holds either its old contents or exactly `data`: never a mix, never
    empty, never missing (if it existed). Once this returns, it holds `data` durably.
    A stray temp file left by a crash here is harmless: it is never read, and the next call
    truncates it.
    """
    temp = temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        # The temp file's bytes must be on disk before the rename can publish them; else a
        # power loss could leave a renamed but empty or NUL-filled file.
        os.fsync(fd)
    finally:
        os.close(fd)
    # rename(2) swaps the name in one step; the old file stays whole until that moment.
    # Never delete the old file first: that opens a window with no file at all.
    os.replace(temp, path)
    # The rename lives in the directory: fsync it, or a power loss could undo it.
    fsync_directory(os.path.dirname(path) or ".")


def move_durably(source, target):
    """Rename `source` to `target` (same folder) and make the rename survive a power loss."""
    os.replace(source, target)
    fsync_directory(os.path.dirname(target) or ".")


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
