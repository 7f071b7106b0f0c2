"""Real processes for tests: the ingest and the worker on a state folder, and supervisord
with the shipped supervisord.conf. Whatever a test starts is gone after it, pass or fail."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from http_client import answers_http, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ("app", "storage", "worker", "cluster")


def short_temp_dir():
    # supervisord's AF_UNIX socket path must stay under 107 bytes.
    return Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))


def service_env(state_dir, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env["MINI_ANALYTICS_STATE_DIR"] = str(state_dir)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        env[f"MINI_ANALYTICS_{name.upper()}"] = str(value)
    return env


def ready(proc):
    """True once `proc` answers HTTP on proc.port; fails at once if it has exited."""
    if proc.poll() is not None:
        raise AssertionError(f"process exited with {proc.returncode}:\n{proc.log_path.read_text()}")
    return answers_http(proc.port)


class Procs:
    """Starts real processes and guarantees they are gone after the test."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.started = []

    def spawn(self, args, env, name, new_session=False, **popen):
        """`popen`: more of subprocess.Popen's arguments (pass_fds)."""
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=new_session, **popen,
        )
        log.close()
        proc.log_path = self.log_dir / f"{name}.log"
        self.started.append(proc)
        return proc

    def ingest(self, state_dir, port=None, launcher=(), popen=None, **settings):
        """`launcher`: a command that runs the ingest's command given after it."""
        port = port or free_port()
        env = service_env(state_dir, port=port, **settings)
        proc = self.spawn([*launcher, sys.executable, "-m", "app"], env, "ingest",
                          **(popen or {}))
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


def copy_of_the_code(root):
    """The programs, the shipped supervisord.conf and cluster/, copied into `root` with an
    empty state/."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "supervisord.conf", root / "supervisord.conf")
    (root / "state").mkdir()


class Supervisor:
    """The shipped supervisord.conf, run on a copy of the code in a short temp folder.

    The copy gives the run its own state/ folder (and control socket) while the conf file
    itself is byte-for-byte the one in the repository.
    """

    def __init__(self, root, port, path=None, **settings):
        self.root = root
        self.port = port
        self.state_dir = root / "state"
        self.conf = root / "supervisord.conf"
        self.env = service_env(self.state_dir, port=port, **settings)
        del self.env["MINI_ANALYTICS_STATE_DIR"]  # the conf's default, state/ beside it
        # By default as with the requirements installed without a virtual environment (or
        # with one activated): the programs find Python on PATH.
        self.env["PATH"] = path or f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.proc = None
        self.child_pids = set()
        # The pid each program was last SIGKILLed as, across kill_in_turn calls: supervisord
        # reports a killed process RUNNING until it has reaped it, and a next call that took
        # that pid for a live one would find it gone (a program seemingly ended on its own).
        self.killed = {"ingest": None, "worker": None}

    def start(self, wait=True):
        # Opened as a shell's `> file` opens it (not in append mode): the conf must keep the
        # lines whole even so.
        log = open(self.root / "supervisord.out", "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.conf)], cwd=self.root, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if wait:
            wait_for(lambda: self.status().get("ingest") == "RUNNING"
                     and self.status().get("worker") == "RUNNING", what="both programs RUNNING")
            wait_for(self.http_ready, what="the ingest to answer HTTP")

    def http_ready(self):
        return answers_http(self.port)

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

    def all_running(self):
        """Both programs and the bad-setup listener RUNNING."""
        return self.status() == {"ingest": "RUNNING", "worker": "RUNNING",
                                 "stop_on_bad_setup": "RUNNING"}

    def kill_in_turn(self, seconds, rng, moment=(0.0, 0.5), at_least=1):
        """SIGKILL the worker and the ingest in turn for `seconds`, each at a random moment of
        its life (`moment`: the range of seconds after it is seen RUNNING), and each at least
        `at_least` times however slow the machine (the turns then go on past `seconds`).
        Returns the kills per program."""
        kills = {"ingest": 0, "worker": 0}
        killed = self.killed
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or min(kills.values()) < at_least:
            program = "ingest" if sum(kills.values()) % 2 else "worker"
            # Any running process, however young: supervisord restarts every kill at once.
            # A new one each time: supervisord may report a killed process RUNNING until it
            # has reaped it.
            pid = wait_for(lambda: self.status().get(program) == "RUNNING"
                           and self.pid(program) not in (None, killed[program])
                           and self.pid(program), what=f"a new {program} RUNNING")
            time.sleep(rng.uniform(*moment))  # a random moment in its life
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                # It ended on its own: never expected of either program, so say how. Its
                # last lines and supervisord's word on its exit may come just after the reap.
                spawned = f"spawned: '{program}' with pid {pid}"
                try:
                    wait_for(lambda: f"exited: {program}" in self.log().split(spawned)[-1],
                             10, what=f"supervisord to report how {program} ended")
                except AssertionError:
                    pass
                raise AssertionError(
                    f"{program} (pid {pid}) ended on its own before it was killed; "
                    f"supervisord's output from its start:\n"
                    f"{spawned}{self.log().split(spawned)[-1][-6000:]}") from None
            kills[program] += 1
            killed[program] = pid
        return kills

    def pid(self, name):
        """The program's pid while it is RUNNING, else None (never 0: see stack notes)."""
        text = self.ctl("pid", name, check=False).stdout.strip()
        pid = int(text) if text.isdigit() else 0
        if pid:
            self.child_pids.add(pid)
        return pid or None

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
