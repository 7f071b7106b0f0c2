"""The checkpoint store: data2's one writer (commit, set aside) and one reader (load).

The format is in storage/checkpoint.py. Guarantees:

* commit() replaces data2 atomically and durably (storage/durable.py): at every instant data2
  is a whole checkpoint, the old one or the new one.
* load() never returns a checkpoint it cannot vouch for: a data2 it cannot parse raises
  CorruptCheckpoint, one in an unknown format raises UnsupportedVersion.
* Nothing is ever deleted: a rejected data2 is moved aside as data2.bad-<time>.
"""

import dataclasses
import os

from storage import checkpoint
from storage.durable import move_durably, replace_durably
from storage.layout import Layout, temp_path


class CheckpointStore:
    def __init__(self, state_dir):
        self.layout = Layout(state_dir)
        self.path = self.layout.data2

    def load(self):
        """The committed checkpoint, or None if there is none. Raises CorruptCheckpoint."""
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        return checkpoint.decode(data)

    def commit(self, new):
        """Make `new` the durable data2, stamped with the time; return the stamped checkpoint.

        The caller must first make the log durable up to new.offset (the pointer must never
        get ahead of the data). Any OSError propagates: the caller must exit.
        """
        stamped = dataclasses.replace(new, updated_at=checkpoint.utc_now_iso())
        replace_durably(self.path, checkpoint.encode(stamped))
        return stamped

    def set_aside(self):
        """Move data2 out of the way, kept for inspection; return where it went (or None)."""
        if not self.path.exists():
            return None
        aside = self.layout.set_aside(self.path)
        move_durably(self.path, aside)
        return aside

    def remove_stray_temp(self):
        """Delete a temp file left by a commit that crashed before its rename; return its
        path, or None if there was none.

        It was never data2, so nothing is lost; it is removed so that nobody mistakes it
        for a checkpoint.
        """
        temp = temp_path(self.path)
        if not temp.exists():
            return None
        os.unlink(temp)
        return temp
