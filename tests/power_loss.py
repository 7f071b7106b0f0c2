"""A disk that can lose power: what the ingest's files hold after a power loss at any write or
sync, for tests that run the real log writer and worker in this process.

A process killed by SIGKILL leaves every write it made in the kernel; a power loss keeps only
what was synced. This model tracks the files named in TRACKED inside one state folder: the
contents each had when its latest fsync or fdatasync began (by whoever made it: the ingest's
sync thread, or the worker syncing data1 before a commit), and, at the power loss, keeps any
subset of the pages written since, the lost ones reading as NULs, and a length anywhere
from the synced one to the written one. That is what LazyFS's clear-cache, torn-op and
torn-seq faults leave, drawn at random from a seed.

Every write, fsync and fdatasync of a tracked file is a numbered step; the power fails just
before or just after step `fail_at`. The thread that reaches it records the image of the
folder, and neither it nor any other thread takes a tracked step after that: the ingest's
sync thread is parked (acknowledging nothing more), the test's own thread gets PowerLost.
A sync still under way when the power fails counts for nothing, even if it returns later,
after the test has moved on to the next folder.
Everything else in the folder (the dedupe index, the worker's stores) is copied as it is
at that instant: its own writers sync it as their designs say, and the tests of those
designs plant their stale states.
"""

import contextlib
import os
import threading

TRACKED = ("data1", "data1.details", "data1.timeindex")
PAGE = 64  # small pages: a single request's bytes can tear too


class PowerLost(BaseException):
    """Raised in the test's thread when the power fails there."""


class Disk:
    """One state folder at a time (start): the folders of earlier power losses are left to
    whatever threads still write them, untracked."""

    def __init__(self, rng):
        self.rng = rng
        self.folder = None
        self.image = None  # {name: bytes} once the power failed
        # Held by the test around each of its actions, and by the power loss while it
        # copies the folder: the copy never sees half of an action of the test's thread.
        self.lock = threading.RLock()
        self.quiet = []  # more locks to hold while the folder is copied (a store's writer's)
        self.on_power_loss = None  # called at the instant of the loss, holding the lock
        self._parked = threading.Event()
        # The model's own lock, held briefly: around each tracked write, a sync's read and
        # record, start(), and the power loss's reading of the model. Never held while
        # taking `lock` (always taken first) nor across a sync.
        self._model = threading.Lock()
        self._real = {name: getattr(os, name) for name in ("write", "fsync", "fdatasync")}

    def start(self, folder, fail_at, after):
        """Track `folder`; the power fails just before (or after) tracked step `fail_at`."""
        with self.lock, self._model:
            self.folder = str(folder)
            self.fail_at, self.after = fail_at, after
            self.steps = 0
            self.synced = {name: _read(folder, name) for name in TRACKED}
            self.synced_at = {}  # name: the write count when the sync recorded began
            self.writes = 0
            self.image = None
            self.quiet = []

    def install(self, monkeypatch):
        for name, real in self._real.items():
            monkeypatch.setattr(os, name, self._wrap(name, real))

    def _tracked(self, fd, folder):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        parent, name = os.path.split(path)
        return name if parent == folder and name in TRACKED else None

    def _wrap(self, op, real):
        def call(fd, *args):
            folder = self.folder
            name = self._tracked(fd, folder)
            if name is None:
                return real(fd, *args)
            self._step(folder)
            if op == "write":
                with self._model:  # a sync's read of the file sees it whole, or not at all
                    result = real(fd, *args)
                    self.writes += 1
            else:
                # A sync makes durable at least what was written when it began. Two threads
                # sync data1 (the ingest's and the worker's): the later write count wins,
                # whichever call returns last, so the model never forgets a sync the
                # engine relied on. A call begun before the power failed and ending after
                # it records nothing: the image is taken, or the test has moved on.
                with self._model:
                    began = (self.writes, _read(folder, name))
                result = real(fd, *args)
                with self._model:
                    if (self.image is None and folder == self.folder
                            and began[0] >= self.synced_at.get(name, -1)):
                        self.synced[name], self.synced_at[name] = began[1], began[0]
            self._step(folder, after=True)
            return result
        return call

    def _step(self, folder, after=False):
        with self._model:
            # A thread still finishing a call begun before the power failed and the test
            # moved on to the next folder: its engine is gone, as its step must be.
            gone = self.image is not None or folder != self.folder
            fail = False
            if not gone and after == self.after:
                self.steps += 1
                fail = self.steps == self.fail_at
        if gone:
            self._stop()
        if fail:
            self.fail_now()
            self._stop()

    def _stop(self):
        if threading.current_thread() is threading.main_thread():
            raise PowerLost()
        self._parked.wait()  # a daemon thread, gone with the test's process (or set free)

    def fail_now(self):
        """The power fails at once (if it has not already)."""
        with self.lock:
            if self.image is None:
                self.image = self._lose_power()

    def _lose_power(self):
        if self.on_power_loss:
            self.on_power_loss()
        image = {}
        with contextlib.ExitStack() as held:
            for lock in self.quiet:
                held.enter_context(lock)
            held.enter_context(self._model)
            for entry in os.listdir(self.folder):
                path = os.path.join(self.folder, entry)
                if entry in TRACKED:
                    image[entry] = self._kept(self.synced[entry], _read(self.folder, entry))
                elif os.path.isfile(path):
                    image[entry] = _read(self.folder, entry)
                elif os.path.isdir(path):  # the dedupe index's folder
                    for inner in os.listdir(path):
                        name = os.path.join(entry, inner)
                        image[name] = _read(self.folder, name)
        return image

    def _kept(self, synced, written):
        """What a power loss keeps of a file synced as `synced`, then written to `written`."""
        length = self.rng.choice([len(synced), len(written),
                                  self.rng.randint(min(len(synced), len(written)),
                                                   max(len(synced), len(written)))])
        kept = bytearray(length)
        for start in range(0, length, PAGE):
            was, now = synced[start:start + PAGE], written[start:start + PAGE]
            page = now if was == now or self.rng.random() < 0.5 else was
            page = page[:length - start]
            kept[start:start + len(page)] = page
        return bytes(kept)

    def restore(self, folder):
        """Lay the image the power loss left into `folder` (new and empty)."""
        os.makedirs(folder)
        for entry, data in self.image.items():
            os.makedirs(os.path.dirname(os.path.join(folder, entry)), exist_ok=True)
            with open(os.path.join(folder, entry), "wb") as file:
                file.write(data)


def _read(folder, name):
    try:
        with open(os.path.join(folder, name), "rb") as file:
            return file.read()
    except FileNotFoundError:
        return b""

