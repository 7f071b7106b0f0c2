"""Ledgers: clients that remember what became of every event they sent, the set checker that
judges the counts against them, and a watcher that checks the invariant while a test runs."""

import collections
import http.client
import sqlite3
import threading
import time

from http_client import wait_for
from reference import check_invariant, check_series, read_checkpoint, read_series


class Posters:
    """Client threads posting ids unique per request, with a ledger of what became of each.

    acked: answered 202, so they must be counted exactly once.
    refused: answered with an error status, or never connected: never written.
    unknown: the connection broke mid-request, or the answer said the events "may or may
    not be stored" (a 503 in cluster mode whose publish was not acknowledged in time):
    written at most once.

    With batch_size > 1 each request is a POST /batch of that many unique ids. Ids start at
    first_id, so several Posters can run side by side without sharing any.
    """

    def __init__(self, port, threads=4, batch_size=1, first_id=1, timeout=10, token=None):
        self.port, self.threads, self.batch_size, self.first_id = port, threads, batch_size, first_id
        # A project's write token, which its events are kept under (docs/projects.md).
        self.headers = {"Judo-Access-Token": token} if token else {}
        self.timeout = timeout  # seconds a request may wait for its answer
        self.acked, self.refused, self.unknown = set(), set(), set()
        self.lost_answers = []  # (seconds waited, the error) of the first unknown outcomes
        self._stopping = threading.Event()
        self._threads = []
        self._lock = threading.Lock()

    def __enter__(self):
        for index in range(self.threads):
            thread = threading.Thread(target=self._post_loop, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc):
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    @property
    def sent(self):
        return self.acked | self.refused | self.unknown

    def _record(self, ledger, ids):
        with self._lock:
            ledger.update(ids)

    def _request(self, ids):
        if self.batch_size == 1:
            return "/event", b'{"experienceID": %d}' % ids[0]
        events = ", ".join('{"experienceID": %d}' % i for i in ids)
        return "/batch", ('{"batch": [%s]}' % events).encode()

    def _post_loop(self, index):
        conn = None
        request_number = 0
        while not self._stopping.is_set():
            # Thread `index` owns every threads-th block of batch_size ids: unique everywhere.
            start = self.first_id + (request_number * self.threads + index) * self.batch_size
            request_number += 1
            ids = list(range(start, start + self.batch_size))
            path, body = self._request(ids)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=self.timeout)
                    conn.connect()
            except OSError:
                conn = None
                self._record(self.refused, ids)
                self._stopping.wait(0.01)  # the server is down: don't spin
                continue
            began = time.monotonic()
            try:
                conn.request("POST", path, body=body, headers=self.headers)
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                conn = None
                self._record(self.unknown, ids)
                if len(self.lost_answers) < 5:
                    self.lost_answers.append((round(time.monotonic() - began, 2), repr(error)))
                continue
            if response.status == 202:
                self._record(self.acked, ids)
            elif b"may or may not be stored" in answer:
                self._record(self.unknown, ids)
            else:
                self._record(self.refused, ids)
        if conn is not None:
            conn.close()


def check_ledgers(counts, *posters):
    """The set checker: acked exactly once, unknown at most once, refused never, and
    nothing counted that was never sent."""
    counted = {int(key): value for key, value in counts.items()}
    acked = set().union(*(p.acked for p in posters))
    unknown = set().union(*(p.unknown for p in posters))
    refused = set().union(*(p.refused for p in posters))
    missing = [i for i in acked if counted.get(i) != 1]
    assert not missing, f"{len(missing)} acknowledged ids not counted exactly once: {missing[:10]}"
    twice = [i for i in unknown if counted.get(i, 0) > 1]
    assert not twice, f"ids counted more than once: {twice[:10]}"
    never_sent = set(counted) - acked - unknown - refused
    assert not never_sent, f"ids counted but never sent: {sorted(never_sent)[:10]}"
    written_refused = [i for i in refused if i in counted]
    assert not written_refused, f"refused ids were counted: {written_refused[:10]}"


def check_series_ledgers(state_dir, *posters):
    """The set checker on the counts over time: each acknowledged event in exactly one
    minute, unknown ones at most once, refused never; the series as exact as data2, and
    summing to the same total."""
    offset, minutes, hours = read_series(state_dir)
    checkpoint = read_checkpoint(state_dir)
    assert offset == checkpoint["offset"], "the series store is not caught up"
    per_experience = collections.Counter()
    for (experience, _), count in minutes.items():
        if experience != -1:
            per_experience[experience] += count
    check_ledgers(per_experience, *posters)
    assert sum(n for (e, _), n in hours.items() if e == -1) == checkpoint["events"]
    check_series(state_dir)


class InvariantWatcher:
    """Checks the data1/data2 invariant over and over while a test runs."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.observations = 0
        self.series_observations = 0
        self.failures = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stopping.set()
        self._thread.join(timeout=30)
        assert not self.failures, self.failures[:3]

    def watched(self):
        """Wait for the watcher to check the invariant once more: how often it can in a test
        depends on the machine's speed (it recounts data1), so a test waits for it."""
        seen = self.observations
        wait_for(lambda: self.observations > seen, what="the invariant checked again")

    def _watch(self):
        while not self._stopping.wait(0.02):
            try:
                if check_invariant(self.state_dir) is not None:
                    self.observations += 1
                # The series store's own invariant, less often: it recounts data1 by model.
                if self.observations % 10 == 0 and check_series(self.state_dir) is not None:
                    self.series_observations += 1
            except (AssertionError, ValueError, sqlite3.Error) as failure:
                self.failures.append(repr(failure)[:500])
