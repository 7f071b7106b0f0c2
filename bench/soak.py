"""`python -m bench soak` (`python -m bench.soak [seconds]` for a shorter look): the whole
engine on one machine under SDK traffic for ten minutes, offered at 80 % of what the ingest
alone was measured to take in the same run. The question:
does the overview keep up? (Its lag must stay bounded: under 10 s at the end.)

1. Capacity: the ingest alone (fsync on, dedupe on, a fresh state folder), wrk posting SDK
   batches of 100 fresh events (bench/sdk.py's body) for CAPACITY_SECONDS: events/s.
2. Soak: another fresh state folder, the ingest and the worker (overview on, the default
   5-second interval), and SENDERS paced senders offering 80 % of that rate as installs'
   sessions: each request BATCH screen views of one install, through its experience's
   screens in order, timed now.
3. Every REPORT_EVERY seconds a line: events/s offered and acknowledged since the last line,
   the overview's lag (from the oldest SDK event it has not counted to now, in seconds), the
   counts' lag (data1 bytes behind data2), and each program's RSS.
At the end, the overview's lag at the end and at its largest, and each program's peak RSS.
"""

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.harness import REPO, free_port, run_wrk, scratch_dir, wait_until_listening
from bench.sdk import fresh_ids_script, sdk_body, DONE
from storage.layout import Layout
from storage.log import details

CAPACITY_SECONDS = 10
SHARE = 0.8  # of the capacity, offered
SENDERS = 16  # as wrk's connections: enough that a slow answer holds up little of the rate
BATCH = 50
INSTALLS = 20_000
EXPERIENCES = 1000
SCREENS = 6  # each experience's flow
REPORT_EVERY = 10
BOUNDED_LAG = 10.0  # seconds: the overview's lag at the end must be under this


def start(program, state_dir, port, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env.update({"MINI_ANALYTICS_STATE_DIR": str(state_dir), "MINI_ANALYTICS_PORT": str(port),
                **{f"MINI_ANALYTICS_{name.upper()}": str(value)
                   for name, value in settings.items()}})
    return subprocess.Popen([sys.executable, "-m", program], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid, field="VmRSS"):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    return int(next(line for line in status.splitlines()
                    if line.startswith(field)).split()[1]) / 1024


def measure_capacity():
    """The ingest's SDK events/s alone, fsync and dedupe on."""
    folder = scratch_dir()
    script = folder / "sdk.lua"
    script.write_text(fresh_ids_script(sdk_body()) + DONE)
    (folder / "state").mkdir()
    port = free_port()
    ingest = start("app", folder / "state", port)
    try:
        wait_until_listening(port, ingest)
        run_wrk(port, str(script), seconds=1)
        return run_wrk(port, str(script), seconds=CAPACITY_SECONDS)["rate"] * 100
    finally:
        stop(ingest)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


class Senders:
    """SENDERS threads offering `rate` events/s in batches of BATCH views of one install,
    each on its own kept-alive connection, paced to a schedule (a sender behind it sends at
    once, so the offered rate holds while the ingest keeps up)."""

    def __init__(self, port, rate):
        self.port = port
        self.interval = SENDERS * BATCH / rate  # seconds between one sender's requests
        self.offered = self.acknowledged = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(n,), daemon=True)
                         for n in range(SENDERS)]
        self._prefix = os.urandom(6).hex()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _body(self, sender, number):
        install = (number * SENDERS + sender) % INSTALLS
        experience = 1 + install % EXPERIENCES
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        events = [{
            "id": f"{self._prefix}-{sender}-{number}-{n}", "timestamp": stamp,
            "anonymousID": f"soak-install-{install}", "type": "screen",
            "properties": {"id": f"screen-{(number + n) % SCREENS + 1}", "name": "Écran",
                           "experienceID": str(experience), "experienceRevisionID": "1",
                           "experienceName": f"Experience {experience}"},
            "context": {"os": {"name": "iOS", "version": "17.2"}, "locale": "en-CA"},
        } for n in range(BATCH)]
        return json.dumps({"batch": events}).encode()

    def _send(self, sender):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        due, number = time.monotonic() + sender * self.interval / SENDERS, 0
        while not self._stop.is_set():
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            due += self.interval
            body = self._body(sender, number)
            number += 1
            with self._lock:
                self.offered += BATCH
            try:
                connection.request("POST", "/batch", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                ok = answer.status == 202
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                ok = False
            with self._lock:
                if ok:
                    self.acknowledged += BATCH
                else:
                    self.failed += BATCH
        connection.close()

    def totals(self):
        with self._lock:
            return self.offered, self.acknowledged, self.failed


def overview_lag(layout, now):
    """Seconds from the oldest SDK event the overview has not counted (its details group's
    receive time) to `now`; 0 when it has counted them all."""
    try:
        db = sqlite3.connect(f"file:{layout.overview}?mode=ro", uri=True, timeout=5)
        try:
            position, = db.execute("SELECT position FROM state").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        position = 0  # not created yet: nothing counted
    try:
        fd = os.open(layout.details, os.O_RDONLY)
    except FileNotFoundError:
        return 0.0
    try:
        for group in details.read_groups(fd, max(position, details.HEADER.size)):
            return max(0.0, now - group.received_ms / 1000)
        return 0.0
    finally:
        os.close(fd)


def counts_lag_bytes(layout):
    try:
        offset = json.loads(layout.data2.read_bytes())["offset"]
    except (FileNotFoundError, ValueError, KeyError):
        offset = 0
    try:
        return max(0, layout.data1.stat().st_size - offset)
    except FileNotFoundError:
        return 0


def bench_soak(seconds=600):
    capacity = measure_capacity()
    rate = SHARE * capacity
    print(f"soak: the ingest alone takes {capacity:,.0f} SDK events/s; offering {rate:,.0f} "
          f"for {seconds} s", flush=True)
    folder = scratch_dir()
    state = folder / "state"
    state.mkdir()
    layout = Layout(state)
    port = free_port()
    ingest = start("app", state, port)
    worker = start("worker", state, port)  # the port unused: the settings are shared
    lags, peaks = [], {"ingest": 0.0, "worker": 0.0}
    try:
        wait_until_listening(port, ingest)
        began = time.monotonic()
        with Senders(port, rate) as senders:
            last, last_totals = began, (0, 0, 0)
            while time.monotonic() - began < seconds:
                time.sleep(max(0.0, last + REPORT_EVERY - time.monotonic()))
                now = time.monotonic()
                totals = senders.totals()
                lag = overview_lag(layout, time.time())
                lags.append(lag)
                rss = {"ingest": rss_mb(ingest.pid), "worker": rss_mb(worker.pid)}
                offered, acknowledged = ((totals[i] - last_totals[i]) / (now - last)
                                         for i in (0, 1))
                print(f"soak {now - began:5.0f} s: offered {offered:8,.0f} ev/s (of {rate:,.0f}), "
                      f"acknowledged {acknowledged:8,.0f} ev/s, overview lag {lag:6.1f} s, "
                      f"counts lag {counts_lag_bytes(layout):10,} bytes, RSS ingest "
                      f"{rss['ingest']:.0f} MB, worker {rss['worker']:.0f} MB", flush=True)
                last, last_totals = now, totals
            offered, acknowledged, failed = senders.totals()
        for program, proc in (("ingest", ingest), ("worker", worker)):
            peaks[program] = rss_mb(proc.pid, "VmHWM")
    finally:
        stop(ingest)
        stop(worker)
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    return {
        "soak_seconds": seconds,
        "soak_capacity_events_s": capacity,
        "soak_offered_events_s": offered / seconds,
        "soak_acknowledged_events_s": acknowledged / seconds,
        "soak_failed_events": failed,
        "soak_overview_lag_end_s": lags[-1] if lags else 0.0,
        "soak_overview_lag_max_s": max(lags, default=0.0),
        "soak_overview_lags_s": lags,
        "soak_overview_bounded": bool(lags) and lags[-1] < BOUNDED_LAG,
        "soak_ingest_peak_rss_mb": peaks["ingest"],
        "soak_worker_peak_rss_mb": peaks["worker"],
    }


def rows(results):
    """The bench table's lines for this part."""
    if "soak_seconds" not in results:
        return []
    return [
        ("Soak: the ingest alone (SDK events/s)", f"{results['soak_capacity_events_s']:,.0f}"),
        ("Soak: offered / acknowledged (SDK events/s)",
         f"{results['soak_offered_events_s']:,.0f} / "
         f"{results['soak_acknowledged_events_s']:,.0f}"),
        ("Soak: overview lag at the end / largest (s)",
         f"{results['soak_overview_lag_end_s']:.1f} / {results['soak_overview_lag_max_s']:.1f}"
         f" ({'bounded' if results['soak_overview_bounded'] else 'NOT bounded'})"),
        ("Soak: peak RSS, ingest / worker (MB)",
         f"{results['soak_ingest_peak_rss_mb']:.0f} / {results['soak_worker_peak_rss_mb']:.0f}"),
    ]


if __name__ == "__main__":
    for label, value in rows(bench_soak(int(sys.argv[1]) if len(sys.argv) > 1 else 600)):
        print(f"{label}: {value}")
