"""One process per role per state folder, enforced with flock.

An flock dies with its process, however the process dies, so a SIGKILL never leaves a stale
lock behind for supervisord's restart to trip over.
"""

import fcntl
import os


class AlreadyLocked(Exception):
    pass


def hold_exclusive_lock(path):
    """Take an exclusive flock on `path` (created if missing) and return its descriptor.

    Keep the descriptor open for as long as the lock must be held. Raises AlreadyLocked at
    once, without waiting, if another process holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyLocked(f"{path} is held by another process") from None
    return fd

