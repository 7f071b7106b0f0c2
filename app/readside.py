"""The read side of the ingest process: data2 as the counts API serves it.

data2 is replaced atomically, so any read of it is a consistent snapshot. Parsing a large one
costs real time (about a second per million experiences), so it is parsed once per commit,
not once per request: the parsed checkpoint is kept until data2's inode changes.
"""

import os
import threading

from storage.checkpoint_store import CheckpointStore


class CheckpointReader:
    def __init__(self, state_dir):
        self.store = CheckpointStore(state_dir)
        self._lock = threading.Lock()
        self._identity = None
        self._checkpoint = None

    def current(self):
        """The latest committed checkpoint, or None if the worker has not committed one.

        Raises CorruptCheckpoint if data2 cannot be read (the worker will replace it).
        """
        try:
            stat = os.stat(self.store.path)
        except FileNotFoundError:
            return None
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if identity != self._identity:
                loaded = self.store.load()  # None if it was just moved aside
                self._checkpoint, self._identity = loaded, identity if loaded else None
            return self._checkpoint
