"""data1.seen: the SDK event ids accepted within the dedupe window, so a retry is kept once.

The SDKs send an event again, with the same id, whenever they did not read a 2xx for it:
possibly hours later, possibly to another node. The ingest answers such a repeat as
accepted, and neither stores nor counts it again.

Design (Kafka's idempotent producer: dedupe at the log, with state rebuilt from the log)
    data1.details (storage/log/details.py) is the truth: it holds every accepted event's id with
    its receive time, made durable before the 2xx. This index is derived from it and can
    always be rebuilt from it:

    * SQLite, in WAL mode without a sync per commit: a crash may lose its last commits,
      never tear it. Its `covered` mark is the details offset up to which every group's
      ids are in it, committed with them; on open the groups after the mark are added
      again (read from data1.details, which is durable).
    * It only ever holds ids whose groups are durable (see note_synced): a first delivery
      is never swallowed by an id that a crash then took away.
    * Memory stays bounded whatever the window holds: the ids are on disk, keyed by a
      16-byte BLAKE2b hash of the id (a collision among 20 M ids has odds near 10^-24);
      only the ids of the last second or so are in memory, waiting to be written.
    * Ids expire by generation: ids received in window-long period g go into table g % 2,
      which is emptied when period g begins (it held period g - 2, all older than the
      window). A lookup asks both tables for ids received within the window.
    * Never trusted blindly: an index that fails SQLite's quick_check, was built from
      another details file (its identity differs), or covers more than the details file
      holds, is set aside and rebuilt from the details of the last window.

Format
    tables   meta(key TEXT PRIMARY KEY, value)
                 version      1
                 details      the identity of the details file it was built from (hex)
                 covered      details offset up to which its ids are complete
                 window       the window (seconds) it was built with
                 generation0, generation1   the period each table holds
             seen0, seen1(key BLOB PRIMARY KEY, second INTEGER) WITHOUT ROWID
                 second: the receive time (Unix seconds) of the id's first delivery

One writer and reader: the ingest (storage/log/writer.py calls it under data1's write lock).
"""

import logging
import sqlite3
import threading
import time

from storage.backend import event_key
from storage.log import details as details_file
from storage.process import die, unpin_this_thread

log = logging.getLogger("ingest")

VERSION = 1
FLUSH_EVERY = 1.0  # seconds between writes of waiting ids to the index
KEY_SIZE = 16
# The keys of a lookup or an insert go to SQLite as one blob, cut into keys inside SQLite: one
# statement and one step for them all, so the work runs in C with the GIL released, rather
# than one step per key from Python.
_KEYS = ("WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?) "
         "SELECT substr(?, n * 16 + 1, 16) FROM i")
_LOOKUP = (f"WITH keys(key) AS ({_KEYS}) "
           "SELECT key FROM seen0 WHERE key IN keys AND second >= ? UNION ALL "
           "SELECT key FROM seen1 WHERE key IN keys AND second >= ?")


class SeenIndex:
    def __init__(self, path, details, window, set_aside, clock=time.time):
        """`details`: the open DetailsWriter whose ids this index holds."""
        self.path = path
        self.window = window
        self._clock = clock
        self._details = details
        # Ids claimed but not yet in SQLite: key -> (second, details end of their group).
        # Only the ingest's write lock changes it, and only the flusher empties it.
        self._recent = {}
        self._synced_details = 0  # details offset known durable (from note_synced)
        self._claimed = []  # the keys the last claim made (under data1's write lock)
        self._lock = threading.Lock()  # the flusher against close
        self._open(set_aside)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="seen-index",
                                         daemon=True)
        self._flusher.start()

    # --- opening: trust, or rebuild

    def _connect(self):
        writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        writer.execute("PRAGMA journal_mode=WAL")
        # The index is rebuilt from data1.details: a lost last commit costs a replay only.
        writer.execute("PRAGMA synchronous=NORMAL")
        writer.execute("PRAGMA cache_size=-32768")  # 32 MB: the trees' upper levels stay
        return writer

    def _open(self, set_aside):
        why, self._db = None, None
        try:
            self._db = self._connect()
            why = self._problem()
        except sqlite3.DatabaseError as error:
            why = f"it cannot be read ({error})"
        if why:
            self._rebuild(set_aside, why)
        else:
            covered = int(self._meta("covered"))
            added = self._add_groups(covered)
            # No count of the ids held: on a large window it would scan every row at start.
            log.info("data1.seen: trusted up to offset %d of data1.details; %d ids added from "
                     "past its mark", covered, added)
        self._reader = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        self._reader.execute("PRAGMA cache_size=-32768")

    def _problem(self):
        """Why the index on disk cannot be trusted, or None."""
        tables = {row[0] for row in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return "it is new"
        if tables != {"meta", "seen0", "seen1"}:
            return "its tables are not an index's"
        if self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return "it fails SQLite's quick_check"
        if self._meta("version") != str(VERSION):
            return f"its version is {self._meta('version')}, not {VERSION}"
        if self._meta("details") != self._details.identity.hex():
            return "it was built from another data1.details"
        if int(self._meta("covered")) > self._details.end:
            return "it holds ids past the end of data1.details (lost from there)"
        if int(self._meta("window")) != self.window:
            return "it was built with another window"
        return None

    def _rebuild(self, set_aside, why):
        began = time.monotonic()
        if why != "it is new":
            if self._db is not None:
                self._db.close()
            aside = set_aside(self.path)
            for suffix in ("", "-wal", "-shm"):
                try:
                    self.path.with_name(self.path.name + suffix).rename(
                        aside.with_name(aside.name + suffix))
                except FileNotFoundError:
                    pass
            log.warning("data1.seen: %s; kept aside as %s, rebuilt from data1.details",
                        why, aside.name)
            self._db = self._connect()
        self._db.executescript(f"""
            CREATE TABLE meta(key TEXT PRIMARY KEY, value);
            CREATE TABLE seen0(key BLOB PRIMARY KEY, second INTEGER) WITHOUT ROWID;
            CREATE TABLE seen1(key BLOB PRIMARY KEY, second INTEGER) WITHOUT ROWID;
            INSERT INTO meta VALUES ('version', '{VERSION}'), ('covered', 0),
                ('details', '{self._details.identity.hex()}'), ('window', {self.window}),
                ('generation0', -1), ('generation1', -1);
        """)
        added = self._add_groups(details_file.HEADER.size)
        log.info("data1.seen: built from data1.details: %d ids in the window, in %.1f s",
                 added, time.monotonic() - began)

    def _add_groups(self, start):
        """Add the ids of the details groups from `start` on (those received within the
        window), and mark the index covered to the end of data1.details."""
        cutoff_ms = int((self._clock() - self.window) * 1000)
        added, pending = 0, []
        for group in details_file.read_groups(self._details.fd, start, cutoff_ms):
            second = group.received_ms // 1000
            project, items = group.events()
            pending.extend((event_key(item["event"]["id"], project), second) for item in items)
            if len(pending) >= 100_000:
                added += self._insert(pending, group.end)
                pending = []
        added += self._insert(pending, self._details.end)
        return added

    # --- the ingest's side, under data1's write lock

    def claim(self, events, received, project=""):
        """For each SdkEvent of `project`, True if it is new (and now claimed: a repeat of
        it, even in this same call, is a duplicate), or False if its id was accepted within
        the window.
        The caller, still holding data1's write lock, must then write the new ones' group
        and call bind, or call unclaim."""
        now = int(received)
        keys = [event_key(event.event_id, project) for event in events]
        recent = self._recent
        # One look at the waiting ids, before SQLite is asked: the flusher commits an id to
        # SQLite before it stops waiting, so an id missed here is found there.
        waiting = {key: recent.get(key) for key in keys}
        asked = [key for key, claimed in waiting.items() if claimed is None]
        since = now - self.window + 1  # remembered while now - second < window
        known = {row[0] for row in self._reader.execute(
            _LOOKUP, (len(asked), b"".join(asked), since, since))} if asked else set()
        fresh, self._claimed = [], []
        for key in keys:
            claimed = waiting[key]
            new = key not in known and (claimed is None or claimed[0] < since)
            if new:
                recent[key] = waiting[key] = (now, None)  # a repeat in this call: duplicate
                self._claimed.append(key)
            fresh.append(new)
        return fresh

    def bind(self, details_end):
        """The last claim's group was written and ends at `details_end`."""
        recent = self._recent
        for key in self._claimed:
            recent[key] = (recent[key][0], details_end)

    def unclaim(self):
        """The last claim's group could not be written: its events were never accepted."""
        for key in self._claimed:
            self._recent.pop(key, None)

    def note_synced(self, details_end):
        """data1.details is durable up to `details_end`: its ids may go into the index."""
        self._synced_details = max(self._synced_details, details_end)

    # --- the flusher: waiting ids into SQLite, off the request path

    def _flush_loop(self):
        # SQLite's inserts run without the GIL: off the ingest's pinned CPU they never hold
        # up a request.
        unpin_this_thread()
        while not self._stop.wait(FLUSH_EVERY):
            try:
                self.flush()
            except Exception as error:
                # Derived state: the restart rebuilds it from data1.details; no event is lost.
                # Never a flusher that ends quietly: the ids would pile up in memory, and the
                # index fall further behind, until the next restart.
                die(log, f"writing data1.seen failed ({error!r}); it is rebuilt on restart")

    def flush(self):
        """Write every claimed id whose group is durable, and mark the index covered up to
        the durable end of data1.details."""
        with self._lock:
            # Every group ending at or before `synced` is bound (log_writer binds before it
            # publishes the end a sync covers), and a later group starts after it: so once
            # the ids bound below it are written, the index is complete up to it.
            synced = self._synced_details
            ready = [(key, second) for key, (second, end) in self._recent_now()
                     if end is not None and end <= synced]
            if not ready and synced <= int(self._meta("covered")):
                return
            self._insert(ready, synced)
            for key, second in ready:
                # Popped after the commit: a lookup that misses it here finds it in SQLite.
                if self._recent.get(key, (None, None))[0] == second:
                    self._recent.pop(key, None)

    def _recent_now(self):
        """A copy of the recent ids' items. Claims change them under the log's write lock,
        which the flusher does not take: copying them in one call is not enough, since a
        garbage collection during the copy can let a claim's thread run. A copy that saw a
        change is made again."""
        while True:
            try:
                return list(self._recent.items())
            except RuntimeError:  # "dictionary changed size during iteration"
                continue

    def _insert(self, pairs, covered):
        """Insert (key, second) pairs, each into its period's table, and set the mark, in one
        transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            by_second = {}
            for key, second in pairs:
                by_second.setdefault(second, []).append(key)
            generations = {table: int(self._meta(f"generation{table}")) for table in (0, 1)}
            for second in sorted(by_second):
                period = second // self.window
                table = period % 2
                if generations[table] > period:
                    continue  # out of the window by now: its table holds a later period
                if generations[table] < period:
                    # Period `period` begins: this table held period - 2 (or older), all
                    # older than the window.
                    db.execute(f"DELETE FROM seen{table}")
                    db.execute("UPDATE meta SET value = ? WHERE key = ?",
                               (period, f"generation{table}"))
                    generations[table] = period
                keys = sorted(by_second[second])  # in key order: fewer pages touched
                db.execute(f"WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i "
                           f"WHERE n + 1 < ?) INSERT OR REPLACE INTO seen{table} "
                           f"SELECT substr(?, n * 16 + 1, 16), ? FROM i",
                           (len(keys), b"".join(keys), second))
            db.execute("UPDATE meta SET value = ? WHERE key = 'covered'", (covered,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(pairs)

    def _meta(self, key):
        return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def close(self):
        self._stop.set()
        self._flusher.join()
        self.flush()
        self._reader.close()
        self._db.close()
