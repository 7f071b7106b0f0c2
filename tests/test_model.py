"""Model-based property test (hypothesis stateful): random sequences of posts, SDK batches and
their retries, raw fragments, worker passes with random chunk sizes, worker kills and crashes
mid-commit, and ingest crashes (mid-token, between the details and the data1 write, with the
dedupe index unwritten), checked against a reference model after every step."""

import collections
import datetime
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from clocks import Clock
from app.validate import sdk_event
from bench.sdk_shapes import IosDevice
from storage.log import details
from reference import check_invariant, check_series, read_checkpoint, read_series, valid_counts
from storage import durable
from storage.log.format import encode
from storage.log.writer import EventLog
from storage.views.overview_store import OverviewStore
from storage.views.series_store import SeriesStore
from worker.runner import Worker

ids = st.integers(0, 2**63 - 1) | st.integers(0, 20)  # small ids repeat, so counts exceed 1
WINDOW = 86400
garbage = st.sampled_from([b"abc", b"007", b"-1", b"\x00\x00", b"9" * 30, b"1.5", b"+2"])
separators = st.sampled_from([b" ", b"\n", b"\t", b"  "])


class Crash(BaseException):
    pass


# Where a worker can die inside a commit: (object to patch, attribute).
COMMIT_STEPS = [
    (os, "fdatasync"),
    (os, "fsync"),
    (os, "replace"),
    (durable, "fsync_directory"),
    (SeriesStore, "commit"),
    (OverviewStore, "commit"),
]



class Engine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ma-model-"))
        self.clock = Clock()
        self.log = self._open_log()
        self.worker = None
        self.expected = collections.Counter()  # what data1's valid complete tokens must count
        self.device = IosDevice()
        self.sent = []  # every SDK event sent, accepted or not: what a retry picks from
        self.accepted_at = {}  # SDK event id -> receive second of its first delivery
        self.screen_views = collections.Counter()  # the SDK's, per experience: the overview's

    def _open_log(self):
        return EventLog(self.dir / "data1", time_index=self.dir / "data1.timeindex",
                        clock=self.clock, details=self.dir / "data1.details",
                        seen=self.dir / "data1.seen", dedupe_window=WINDOW)

    def _ingest_dies(self):
        """The ingest is killed: nothing more is written, not even the dedupe index."""
        seen = self.log._seen
        seen._stop.set()
        seen._flusher.join()
        for fd in (self.log._fd, self.log._index.fd, self.log._details.fd):
            os.close(fd)
        self.log = self._open_log()

    def _sdk_events(self, new, retries):
        moment = self.clock.now
        when = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
        raw = [self.device.screen(when, experience) for experience in new]
        raw += [self.sent[i % len(self.sent)] for i in retries] if self.sent else []
        self.sent.extend(raw[: len(new)])
        return [sdk_event(event, moment, index) for index, event in enumerate(raw)]

    def _expect_sdk(self, events):
        """The model's answer: which of `events` are new, given the window."""
        now = int(self.clock.now)
        fresh = []
        for event in events:
            first = self.accepted_at.get(event.event_id)
            new = first is None or now - first >= WINDOW
            if new:
                self.accepted_at[event.event_id] = now
                self.expected[str(event.experience_id)] += 1
                self.screen_views[event.experience_id] += 1
            fresh.append(new)
        return fresh

    @rule(new=st.lists(st.integers(0, 20), max_size=8), retries=st.lists(st.integers(0, 999),
                                                                          max_size=8))
    def sdk_batch(self, new, retries):
        """Screen views from an SDK: new ones, and retries of any sent before."""
        events = self._sdk_events(new, retries)
        assert self.log.append_events([], events, self.clock.now) == self._expect_sdk(events)

    @rule(new=st.lists(st.integers(0, 20), min_size=1, max_size=8))
    def ingest_dies_between_details_and_data1(self, new):
        """The details group is written, the data1 write is not: never acknowledged."""
        events = self._sdk_events(new, [])
        end = self.log.size
        group = details.encode_group(end, end + 2 * len(new), 0, int(self.clock.now * 1000),
                                     [event.details for event in events])
        os.write(self.log._details.fd, group)
        self._ingest_dies()

    @rule()
    def ingest_dies(self):
        self._ingest_dies()

    @rule()
    def dedupe_index_flushed(self):
        self.log._seen.flush()

    def teardown(self):
        self._stop_worker()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_worker(self):
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def _running_worker(self, chunk_size):
        if self.worker is None:  # a restart: recovery from whatever is on disk
            self.worker = Worker(self.dir, chunk_size)
            self.worker.recover()
        self.worker.chunk_size = chunk_size
        return self.worker

    @rule(batch=st.lists(ids, min_size=1, max_size=20))
    def post(self, batch):
        self.log.append(encode(batch))
        self.expected.update(str(i) for i in batch)

    @rule(tokens=st.lists(st.tuples(garbage | ids.map(lambda i: b"%d" % i), separators), min_size=1, max_size=5))
    def append_raw_fragment(self, tokens):
        """Bytes from outside the ingest: complete tokens, valid or not."""
        fragment = b"".join(token + sep for token, sep in tokens)
        with open(self.dir / "data1", "ab") as data1:
            data1.write(fragment)
        self.log.close()
        self.log = self._open_log()  # the ingest reopens: it must see the new end
        self.expected.update(valid_counts(fragment))

    @rule(seconds=st.sampled_from([0.3, 1, 59, 61, 3600]))
    def time_passes(self, seconds):
        self.clock.now += seconds

    @rule(chunk_size=st.integers(1, 64))
    def worker_pass(self, chunk_size):
        self._running_worker(chunk_size).run_pass()

    @rule()
    def kill_worker(self):
        self._stop_worker()

    @rule(chunk_size=st.integers(1, 64), step=st.sampled_from(COMMIT_STEPS), after=st.booleans())
    def worker_crashes_mid_commit(self, chunk_size, step, after):
        target, name = step
        real = getattr(target, name)

        def dying(*args):
            if after:
                real(*args)
            raise Crash(name)

        worker = self._running_worker(chunk_size)
        with mock.patch.object(target, name, dying):
            try:
                worker.run_pass()
            except Crash:
                pass
        self._stop_worker()  # whatever happened, this worker is dead

    @rule(partial=st.integers(1, 10**6))
    def ingest_crashes_mid_token(self, partial):
        """A record half written when the ingest died: never acknowledged, so not expected."""
        torn = (b"%d" % partial)[: max(1, len(str(partial)) // 2)]
        with open(self.dir / "data1", "ab") as data1:
            data1.write(torn)
        self.log.close()
        self.log = self._open_log()  # restart: the torn tail is removed

    @invariant()
    def checkpoint_and_series_match_data1(self):
        check_invariant(self.dir)
        check_series(self.dir)

    @rule()
    def catch_up_and_compare(self):
        self._stop_worker()
        self._running_worker(4096).run_pass()
        cp = read_checkpoint(self.dir)
        assert cp is not None or not self.expected
        if cp is not None:
            assert cp["counts"] == dict(self.expected)
            offset, _, hours = read_series(self.dir)
            assert offset == cp["offset"]
            assert sum(n for (e, _), n in hours.items() if e == -1) == cp["events"]
        # The overview holds every SDK screen view once, each in one session.
        with sqlite3.connect(self.dir / "overview.sqlite3") as db:
            rows = db.execute("SELECT experience, sum(views), sum(session_screens) "
                              "FROM experience_hour GROUP BY experience").fetchall()
        assert {experience: views for experience, views, _ in rows if views} == dict(
            +self.screen_views)
        assert all(views == in_sessions for _, views, in_sessions in rows)


Engine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestEngineModel = Engine.TestCase
