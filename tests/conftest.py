"""Shared test machinery: real processes on free ports, polling with deadlines, cleanup.

Every process a test starts is registered with the `procs` fixture, which kills it at
teardown whatever the test's outcome.
"""

import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(predicate, timeout=15.0, what="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def short_temp_dir():
    # supervisord's AF_UNIX socket path must stay under 107 bytes.
    return Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))


def request(port, method, path, body=None, headers=None, timeout=10):
    """One HTTP request on a new connection: (status, parsed JSON body or raw bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return response.status, data
    finally:
        conn.close()


def post(port, body, path="/event"):
    return request(port, "POST", path, body)


def read_checkpoint(state_dir):
    path = Path(state_dir) / "data2"
    return json.loads(path.read_bytes()) if path.exists() else None


# The reference model, written independently of the code under test: a complete token is
# non-space bytes followed by a whitespace byte; a valid one is a canonical id up to 2**63-1.
COMPLETE_TOKEN = re.compile(rb"(\S+)\s")
CANONICAL_ID = re.compile(rb"0|[1-9][0-9]{0,18}")
TORN_TAIL = re.compile(rb"\S*\Z")


def valid_counts(data):
    """{id as str: count} of the valid ids among the complete tokens of `data`."""
    counts = collections.Counter(
        str(int(token)) for token in COMPLETE_TOKEN.findall(data)
        if CANONICAL_ID.fullmatch(token) and int(token) < 2**63
    )
    return dict(counts)


def complete_length(data):
    """Bytes of `data` up to and including its last separator."""
    return TORN_TAIL.search(data).start()


def check_invariant(state_dir):
    """Assert data2.counts == counts of the complete tokens in data1[0:data2.offset].

    Reads data2 first: data1 only grows past the offset data2 records, so the prefix it
    names is stable however the processes are racing. Returns the checkpoint (or None).
    """
    checkpoint = read_checkpoint(state_dir)
    if checkpoint is None:
        return None
    with open(Path(state_dir) / "data1", "rb") as data1:
        prefix = data1.read(checkpoint["offset"])
    assert len(prefix) == checkpoint["offset"], "data2's offset is past the end of data1"
    assert checkpoint["counts"] == valid_counts(prefix)
    return checkpoint


def caught_up(state_dir):
    """True once the worker has consumed every complete token in data1."""
    data1 = (Path(state_dir) / "data1").read_bytes()
    checkpoint = read_checkpoint(state_dir)
    return (checkpoint["offset"] if checkpoint else 0) == complete_length(data1)


def service_env(state_dir, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env["MINI_ANALYTICS_STATE_DIR"] = str(state_dir)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        env[f"MINI_ANALYTICS_{name.upper()}"] = str(value)
    return env


class Procs:
    """Starts real processes and guarantees they are gone after the test."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.started = []

    def spawn(self, args, env, name, new_session=False):
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=new_session,
        )
        log.close()
        proc.log_path = self.log_dir / f"{name}.log"
        self.started.append(proc)
        return proc

    def ingest(self, state_dir, port=None, **settings):
        port = port or free_port()
        env = service_env(state_dir, port=port, **settings)
        proc = self.spawn([sys.executable, "-m", "app"], env, "ingest")
        proc.port = port
        wait_for(lambda: ready(proc), what="the ingest to answer HTTP")
        return proc

    def worker(self, state_dir, interval=0.05, **settings):
        env = service_env(state_dir, interval=interval, **settings)
        return self.spawn([sys.executable, "-m", "worker"], env, "worker")

    def cleanup(self):
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def ready(proc):
    if proc.poll() is not None:
        raise AssertionError(f"process exited with {proc.returncode}:\n{proc.log_path.read_text()}")
    try:
        request(proc.port, "GET", "/no-such-page", timeout=1)
        return True
    except OSError:
        return False


@pytest.fixture
def procs(tmp_path):
    registry = Procs(tmp_path)
    yield registry
    registry.cleanup()


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


class Supervisor:
    """The shipped supervisord.conf, run on a copy of the code in a short temp folder.

    The copy gives the run its own state/ folder (and control socket) while the conf file
    itself is byte-for-byte the one in the repository.
    """

    def __init__(self, root, port, **settings):
        self.root = root
        self.port = port
        self.state_dir = root / "state"
        self.conf = root / "supervisord.conf"
        self.env = service_env(self.state_dir, port=port, **settings)
        del self.env["MINI_ANALYTICS_STATE_DIR"]  # the conf's default, state/ beside it
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.proc = None
        self.child_pids = set()

    def start(self):
        log = open(self.root / "supervisord.out", "ab")  # O_APPEND: children share it
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.conf)], cwd=self.root, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_for(lambda: self.status().get("ingest") == "RUNNING"
                 and self.status().get("worker") == "RUNNING", what="both programs RUNNING")
        wait_for(self.http_ready, what="the ingest to answer HTTP")

    def ctl(self, *args, check=True):
        result = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            env=self.env, capture_output=True, text=True, timeout=30,
        )
        if check and result.returncode not in (0, 3):
            raise AssertionError(f"supervisorctl {args} failed: {result.stdout}{result.stderr}")
        return result

    def status(self):
        states = {}
        for line in self.ctl("status", check=False).stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2:
                states[fields[0]] = fields[1]
        return states

    def pid(self, name):
        """The program's pid while it is RUNNING, else None (never 0: see stack notes)."""
        text = self.ctl("pid", name, check=False).stdout.strip()
        pid = int(text) if text.isdigit() else 0
        if pid:
            self.child_pids.add(pid)
        return pid or None

    def http_ready(self):
        try:
            request(self.port, "GET", "/no-such-page", timeout=1)
            return True
        except OSError:
            return False

    def log(self):
        return (self.root / "supervisord.out").read_text(errors="replace")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("shutdown", check=False)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Each child runs in its own process group; make sure none outlives the test.
        for pid in self.child_pids:
            try:
                if Path(f"/proc/{pid}/cwd").resolve() == self.root.resolve():
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def supervisor():
    root = short_temp_dir()
    for name in ("app", "worker"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "supervisord.conf", root / "supervisord.conf")
    (root / "state").mkdir()
    started = []

    def start(**settings):
        sup = Supervisor(root, free_port(), **settings)
        started.append(sup)
        sup.start()
        return sup

    yield start
    for sup in started:
        sup.stop()
    shutil.rmtree(root, ignore_errors=True)


class Posters:
    """Client threads posting ids unique per request, with a ledger of what became of each.

    acked: answered 202, so they must be counted exactly once.
    refused: answered with an error status, or never connected: never written.
    unknown: the connection broke mid-request: written at most once.

    With batch_size > 1 each request is a POST /batch of that many unique ids. Ids start at
    first_id, so several Posters can run side by side without sharing any.
    """

    def __init__(self, port, threads=4, batch_size=1, first_id=1):
        self.port, self.threads, self.batch_size, self.first_id = port, threads, batch_size, first_id
        self.acked, self.refused, self.unknown = set(), set(), set()
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
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    conn.connect()
            except OSError:
                conn = None
                self._record(self.refused, ids)
                self._stopping.wait(0.01)  # the server is down: don't spin
                continue
            try:
                conn.request("POST", path, body=body)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                self._record(self.unknown, ids)
                continue
            self._record(self.acked if response.status == 202 else self.refused, ids)
        if conn is not None:
            conn.close()

    def check_counts(self, counts):
        check_ledgers(counts, self)


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


class InvariantWatcher:
    """Checks the data1/data2 invariant over and over while a test runs."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.observations = 0
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

    def _watch(self):
        while not self._stopping.wait(0.02):
            try:
                if check_invariant(self.state_dir) is not None:
                    self.observations += 1
            except (AssertionError, ValueError) as failure:
                self.failures.append(repr(failure)[:500])
