"""Shared bench machinery: start a server on a free port, wait for it, run wrk against it."""

import collections
import contextlib
import operator
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Every temporary file of the bench (state folders, backlogs, wrk scripts) lives here, on the
# same file system as the project itself, as a real deployment's state/ would. Not in /tmp:
# that is often a tmpfs, where fsync costs nothing and the durable figures would be flattered.
SCRATCH = REPO / "bench" / "scratch"


# How a measure must stand to its target (against).
RELATIONS = {"at least": operator.ge, "above": operator.gt, "under": operator.lt}


def against(shown, value, target, form, relation="at least"):
    """`shown` (a measure as the table prints it) with the issue's `target` for it beside,
    and whether `value` meets it: `relation` to the target, one of RELATIONS."""
    met = RELATIONS[relation](value, target)
    return (f"{shown}; target {relation} {form.format(target)}: "
            f"{'met' if met else 'NOT met'}")


def scratch_dir():
    """A new, empty temporary folder under SCRATCH; the caller removes it."""
    SCRATCH.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError("server did not start listening")


# The pid of the server listening on each port, for a bench that reads its RSS.
PIDS = {}


@contextlib.contextmanager
def server(args, env_extra=None, prepare=None):
    """Run a server process (args get the port appended via env or argv); yield its port and
    state folder. `prepare(state_dir)` runs before the server starts."""
    port = free_port()
    state_dir = scratch_dir()
    if prepare:
        prepare(state_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env.update({"MINI_ANALYTICS_PORT": str(port), "MINI_ANALYTICS_STATE_DIR": str(state_dir)})
    env.update(env_extra or {})
    argv = [arg.format(port=port) for arg in args]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    PIDS[port] = proc.pid
    try:
        wait_until_listening(port, proc)
        yield port, state_dir
    finally:
        stop(proc, 10)
        shutil.rmtree(state_dir, ignore_errors=True)


def stop(proc, timeout=60):
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bare_server(threads, pinned=True):
    """The baseline: bare waitress answering 202 with a Content-Length (kept alive)."""
    return server([sys.executable, "-m", "bench.bare_app", "{port}", str(threads), "keepalive"],
                  {"MINI_ANALYTICS_INGEST_CPU": "auto" if pinned else "all"})


def ingest_server(fsync=True, pinned=True, dedupe_window=None, prepare=None):
    settings = {
        "MINI_ANALYTICS_FSYNC": "on" if fsync else "off",
        "MINI_ANALYTICS_INGEST_CPU": "auto" if pinned else "all",
    }
    if dedupe_window is not None:
        settings["MINI_ANALYTICS_DEDUPE_WINDOW"] = str(dedupe_window)
    return server([sys.executable, "-m", "app"], settings, prepare)


@contextlib.contextmanager
def wrk_script(body, path="/event"):
    """A wrk Lua script posting `body` (bytes) to `path`; yields its path, deletes it after."""
    folder = scratch_dir()
    script = folder / "post.lua"
    lua_body = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        f'wrk.method = "POST"\nwrk.path = "{path}"\nwrk.body = "{lua_body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        # wrk's own summary stops at p99; its Lua hook reaches any percentile (microseconds).
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("PERCENTILES %d %d %d\\n", latency:percentile(50),\n'
        "    latency:percentile(99), latency:percentile(99.9)))\n"
        "end\n"
    )
    try:
        yield str(script)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_wrk(port, script, seconds=5, connections=16, threads=1):
    """{"rate": requests per second that got a 2xx answer, "p50"/"p99"/"p999": latency in ms}.

    One wrk thread: on a 2-core machine, the load generator takes one core, not both.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", script,
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    amount, unit = re.search(r"requests in ([\d.]+)(m?s)", out).groups()
    duration = float(amount) / (1000 if unit == "ms" else 1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(errors.group(1)) if errors else 0
    percentiles = re.search(r"PERCENTILES (\d+) (\d+) (\d+)", out).groups()
    p50, p99, p999 = (int(us) / 1000 for us in percentiles)
    return {"rate": (total - bad) / duration, "p50": p50, "p99": p99, "p999": p999}


# What time_worker_until measured of a worker's run.
WorkerRun = collections.namedtuple("WorkerRun", "seconds peak_rss_mb cpu_seconds")


def cpu_seconds(pid):
    """CPU time the process has used (user and system), seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_worker_until(state_dir, settings, done, every=0.002):
    """A WorkerRun of `python -m worker` on `state_dir` (with `settings`, a dict of
    MINI_ANALYTICS_* variables) until `done()` is true, asked `every` so many seconds: the
    seconds from its start, its peak RSS in MB (VmHWM) and the CPU-seconds it used. The
    worker is stopped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env.update(MINI_ANALYTICS_STATE_DIR=str(state_dir), MINI_ANALYTICS_INTERVAL="3600",
               **settings)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "worker"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not done():
            if proc.poll() is not None:
                raise RuntimeError("the worker exited during the benchmark")
            time.sleep(every)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid)
        with open(f"/proc/{proc.pid}/status") as status:
            peak_kb = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return WorkerRun(elapsed, peak_kb / 1024, cpu)
