"""Whether to take a write now: overload answered only in ways that make the SDKs retry.

When the ingest cannot keep up, a write is answered 503 with Retry-After, never 429: iOS's
SDK drops a chunk on any 4xx for good, and both SDKs retry a 503 later with the same event
ids (which the dedupe window then stores once). Refused, with nothing written:

* the server is behind: more requests wait for a thread than WAITING_PER_THREAD per thread;
* the log cannot take writes now (disk nearly full, a sync stalled, data1 replaced, no NATS
  server): eventlog.problem(), looked at once a second;
* a device asks for more than its fair share of the threads while others have writes in
  progress: the threads divided among the devices writing now (at least 2 each). A device
  alone may use them all; a flooding one cannot starve the others. A device is its
  Judo-Device-ID header, else the client's address (behind a proxy, the address it forwards:
  MINI_ANALYTICS_TRUSTED_PROXY);
* likewise a token, when several write tokens are set, and a project, when there is a
  projects file: one app (or customer) cannot starve the others.
"""

import collections
import threading
import time

WAITING_PER_THREAD = 8
PROBLEM_EVERY = 1.0  # seconds between looks at eventlog.problem()
RETRY_BUSY = 1  # Retry-After, seconds, when the ingest is busy
RETRY_UNAVAILABLE = 10  # when the log cannot take writes


class Busy(Exception):
    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


def device_of(environ):
    return environ.get("HTTP_JUDO_DEVICE_ID") or environ.get("REMOTE_ADDR") or "unknown"


class Admission:
    def __init__(self, eventlog, threads, access=None):
        """`access`: app/access.py's Access, which says whether there are several write
        tokens or projects to share among."""
        self.eventlog = eventlog
        self.threads = threads
        self.waiting_limit = WAITING_PER_THREAD * threads
        self.waiting = lambda: 0  # requests queued for a thread: set by the server
        self._access = access
        self._lock = threading.Lock()
        self._in_flight = {}  # (kind, device or token) -> writes in progress, never 0
        self._active = collections.Counter()  # kind -> how many of that kind are in flight
        self._problem, self._problem_at = None, 0.0

    def _log_problem(self):
        now = time.monotonic()
        if now - self._problem_at >= PROBLEM_EVERY:
            self._problem, self._problem_at = self.eventlog.problem(), now
        return self._problem

    def take(self, environ, grant=None):
        """A place for one write of `grant` (app/access.py's; give the place back with
        release), or Busy if there is none."""
        waiting = self.waiting()
        if waiting > self.waiting_limit:
            raise Busy(f"the ingest is busy ({waiting} requests waiting); retry in "
                       f"{RETRY_BUSY} s", RETRY_BUSY)
        problem = self._log_problem()
        if problem:
            raise Busy(f"the ingest cannot take writes now: {problem}", RETRY_UNAVAILABLE)
        keys = [("device", device_of(environ))]
        access = self._access
        if grant is not None and grant.token is not None and access is not None:
            if access.projects is not None:
                keys.append(("project", grant.project))
            if access.projects is not None or len(access.write) > 1:
                keys.append(("token", grant.token))
        with self._lock:
            for key in keys:
                held = self._in_flight.get(key, 0)
                # A share is at least 2: below that, no need to count who else writes.
                if held >= 2 and held >= self._share(key[0]):
                    what = f"this {key[0]}"
                    raise Busy(f"{what} has {held} writes in progress, its share of the "
                               f"ingest now; retry in {RETRY_BUSY} s", RETRY_BUSY)
            for key in keys:
                held = self._in_flight.get(key, 0)
                if not held:
                    self._active[key[0]] += 1
                self._in_flight[key] = held + 1
        return keys

    def _share(self, kind):
        """The threads divided among the devices (or tokens) writing now (the one asking
        among them: it has writes in progress)."""
        return max(2, self.threads // self._active[kind])

    def release(self, place):
        with self._lock:
            for key in place:
                held = self._in_flight[key] - 1
                if held:
                    self._in_flight[key] = held
                else:
                    del self._in_flight[key]
                    self._active[key[0]] -= 1
