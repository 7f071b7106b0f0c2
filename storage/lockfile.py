"""One process per role per state folder, enforced with flock, and a probe of who holds it.

An flock dies with its process, however the process dies, so a SIGKILL never leaves a stale
lock behind for supervisord's restart to trip over. That also makes the lock the one sure
sign of life: a worker that holds worker.lock is a live process.
"""

import fcntl
import os
import time

# How long hold_exclusive_lock keeps trying before it calls the lock held. A probe holds the
# lock for microseconds; a real second process holds it for good.
TAKE_TIMEOUT = 1.0


class AlreadyLocked(Exception):
    pass


def hold_exclusive_lock(path):
    """Take an exclusive flock on `path` (created if missing) and return its descriptor.

    Keep the descriptor open for as long as the lock must be held. Raises AlreadyLocked if
    another process still holds it after TAKE_TIMEOUT seconds (a probe's brief shared lock
    never makes a start fail).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + TAKE_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise AlreadyLocked(f"{path} is held by another process") from None
            time.sleep(0.01)


def is_held(path):
    """True if some process holds an exclusive lock on `path` right now.

    Takes a shared lock for an instant and lets it go; never creates the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases the shared lock, if we got it
    return False
