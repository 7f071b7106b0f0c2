"""What every program of the engine does the same way: its log lines, its exit codes, and how
it reports a failure to start.

Exit codes, which supervisord.conf relies on (exitcodes=0,2: a stop that was asked for and a
bad setup are "expected" and left stopped; every other exit is restarted at once):

    0   stopped when asked (SIGTERM/SIGINT)
    1   an I/O error in the state folder: a restart may cure it (recovery starts from what
        is on disk)
    2   a bad setup that a restart cannot cure: a bad setting, another instance already
        running on the same state folder, the port taken. The program stays stopped until
        an operator acts; its one log line says why.
    70  the state on disk is no longer known (a failed fsync or undo): exit at once and let
        the restart recover from what is really on disk (sysexits' EX_SOFTWARE)
"""

import ctypes
import logging
import logging.handlers
import os
import select
import signal
import sys
import time

try:
    import resource
except ImportError:  # not a Unix
    resource = None

from storage import settings
from storage.layout import Layout
from storage.lockfile import AlreadyLocked

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETUP = 2
EXIT_STATE_UNKNOWN = 70

LOG_FORMAT = "%(asctime)s %(name)s%(program)s %(levelname)s %(message)s"
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5

# supervisord restarts a failed program at once (startsecs=0): a failure that repeats on
# every start must not turn into a busy loop, so a program that fails within this long of
# starting waits out the rest before it exits (like systemd's RestartSec).
MIN_LIFETIME = 1.0
_started = time.monotonic()


class LogFormatter(logging.Formatter):
    """LOG_FORMAT, naming the program where supervisord runs several of one kind. In cluster
    mode it runs ingest-1 and ingest-2, worker-1 and worker-2 (SUPERVISOR_PROCESS_NAME, in
    the groups ingest and worker), and both of a pair log alike: a line then reads
    `worker[worker-2] INFO ...`. On one machine each program is alone in its group, and
    nothing is added."""

    def __init__(self):
        super().__init__(LOG_FORMAT)
        name = os.environ.get("SUPERVISOR_PROCESS_NAME", "")
        alone = name == os.environ.get("SUPERVISOR_GROUP_NAME", name)
        self.program = "" if alone else f"[{name}]"

    def format(self, record):
        record.program = self.program
        return super().format(record)


def log_to_stderr():
    """Log lines (INFO and up) to stderr, LogFormatter's way."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def start_logging(program, state_dir=None):
    """Log lines to stderr, each written whole in one write (logging's StreamHandler writes a
    line and its newline together; print() writes them apart, and under supervisord another
    program's line can land between the two). With `state_dir`, also to the program's log
    file there, if the folder already has its logs/: so that a start that fails is in the
    file too, while a bad setting on a new folder still creates nothing. Then warns of
    MINI_ANALYTICS_* names that are no setting."""
    log_to_stderr()
    if state_dir is not None and Layout(state_dir).log_file(program).parent.is_dir():
        _log_to_file(Layout(state_dir).log_file(program))
    for warning in settings.unknown():
        logging.getLogger(program).warning("%s", warning)


# supervisord's process communication: what a program writes between these tokens reaches
# its event listeners as one event (and not its log). storage/stop_on_bad_setup.py listens.
COMMUNICATION = "<!--XSUPERVISOR:BEGIN-->{}<!--XSUPERVISOR:END-->"


def bad_setup(log, problem):
    """Report a setup that no restart can mend: one log line and, under supervisord, the same
    words to its listener, which ends the run with them (storage/stop_on_bad_setup.py).
    Returns the exit code for it."""
    log.critical("%s; exiting", problem)
    if os.environ.get("SUPERVISOR_ENABLED"):  # set by supervisord for its programs
        # After the log line (logging flushes each), in one write: never split.
        os.write(sys.stderr.fileno(), COMMUNICATION.format(problem).encode())
    return EXIT_BAD_SETUP


def bad_setting(program, error):
    """Report a bad setting; return the exit code for it."""
    return bad_setup(logging.getLogger(program), error)


def run_in_state_folder(program, state_dir, body):
    """Run `body()`, a program's work on `state_dir`; return its exit code.

    The state folder is created if missing (its parent exists: settings.state_dir checks),
    the program's log is also written to state/logs/<program>.log with rotation, and the
    failures both programs share become one log line and their exit code.
    """
    log = logging.getLogger(program)
    try:
        state_dir.mkdir(exist_ok=True)
        _log_to_file(Layout(state_dir).log_file(program))
        return body()
    except AlreadyLocked:
        return paced(bad_setup(log, f"another {program} is already running on {state_dir}"))
    except OSError as error:
        # An error persisting state ends the process. Nothing half-done is trusted: the next
        # start recovers from what was fully committed.
        log.critical("I/O error in state folder %s: %s; exiting", state_dir, error)
        return paced(EXIT_FAILED)


def _log_to_file(path):
    root = logging.getLogger()
    if any(getattr(handler, "baseFilename", None) == str(path) for handler in root.handlers):
        return
    path.parent.mkdir(exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS
    )
    handler.setFormatter(LogFormatter())
    root.addHandler(handler)


def paced(code):
    time.sleep(max(0.0, MIN_LIFETIME - (time.monotonic() - _started)))
    return code


_ALLOWED_CPUS = None  # the CPUs the process could run on before place_on_cpus pinned it
# The soft limit asked for when the hard limit on open files is unlimited, and the least
# that holds 800 connections beside a few thousand runs of data1.seen.
OPEN_FILES_WANTED = 65536
OPEN_FILES_ADVISED = 4096


def raise_open_files_limit(program):
    """Raise the soft limit on open files to the hard limit (as Go's runtime does at start),
    and log the limit in one line.

    The ingest holds a file per client connection (up to app/__main__.CONNECTION_LIMIT) and
    one per run of data1.seen (about one per million ids in the dedupe window). Under the
    usual soft limit of 1024, a busy ingest with a full window would fail to accept()
    connections, and its seen index to write a run (which stops the ingest: EMFILE).
    Descriptors past 1023 are safe only because the ingest's loop uses poll(), not select()
    (app/__main__.create_server)."""
    log = logging.getLogger(program)
    if resource is None:
        log.info("%s: the open files limit left as it is (no resource module)", program)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        change = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            change, soft = f"{soft} -> {wanted}", wanted
        except (ValueError, OSError) as error:
            change = f"{soft} (raising it to {wanted} was refused: {error})"
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_ADVISED:
        log.warning("%s: open files limit %s: a busy ingest may run out (raise the hard "
                    "limit, ulimit -Hn, to %d or more)", program, change, OPEN_FILES_ADVISED)
    else:
        log.info("%s: open files limit %s", program, change)


# glibc's malloc.h: mallopt's parameter for the most arenas the process may have.
_M_ARENA_MAX = -8


def limit_malloc_arenas(program, arenas=2):
    """Let glibc's malloc keep at most `arenas` arenas (the pools it allocates from), unless
    MALLOC_ARENA_MAX is set. Logs the choice in one line.

    By default a thread that finds the arenas busy gets one of its own, up to 8 per CPU, and
    each keeps what its threads freed in pieces the others do not reuse: the ingest's 16
    request threads, each reading 50 KB SDK bodies, took its RSS to 214-231 MB after four
    minutes of the soak (bench/soak.py), and to 163 MB with two arenas, taking as many
    events. The threads take turns on one CPU and one GIL, so they seldom wait for an
    arena. Call it before the threads start."""
    log = logging.getLogger(program)
    if "MALLOC_ARENA_MAX" in os.environ:
        log.info("%s: malloc arenas as MALLOC_ARENA_MAX says (%s)", program,
                 os.environ["MALLOC_ARENA_MAX"])
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its own allocator, left as it is
        log.info("%s: malloc arenas left as they are (no glibc mallopt)", program)
        return
    if mallopt(_M_ARENA_MAX, arenas) != 1:
        log.warning("%s: mallopt(M_ARENA_MAX, %d) was refused; arenas left as they are",
                    program, arenas)
        return
    log.info("%s: at most %d malloc arenas", program, arenas)


def place_on_cpus(program, ingest_cpu, batch=False):
    """Keep the ingest's threads on `ingest_cpu`, and the worker off it while another CPU is
    free (a catch-up must not take the ingest's core). `batch`: the ingest's threads run
    under SCHED_BATCH there. Logs the choice in one line."""
    log = logging.getLogger(program)
    if ingest_cpu is None:
        log.info("%s: CPU affinity left as it is (MINI_ANALYTICS_INGEST_CPU)", program)
        return
    if not hasattr(os, "sched_setaffinity"):
        log.info("%s: CPU affinity is not supported here; running unpinned", program)
        return
    global _ALLOWED_CPUS
    allowed = _ALLOWED_CPUS = os.sched_getaffinity(0)
    cpus = {ingest_cpu} if program == "ingest" else (allowed - {ingest_cpu} or allowed)
    # Set before any thread starts: threads inherit their creator's affinity (and policy).
    os.sched_setaffinity(0, cpus)
    policy = ""
    if program == "ingest" and batch and hasattr(os, "SCHED_BATCH"):
        # The ingest's threads now share one CPU and one GIL. A thread woken (a request read,
        # a sync done) that preempts the running one mostly finds the GIL held and sleeps
        # again: two context switches for nothing, several per request. Under SCHED_BATCH
        # (sched(7)) a woken thread does not preempt; it runs when the running one blocks,
        # and the sync thread runs once every request thread has written. Measured, 16
        # connections of single events, fsync on: 7,800 to 11,400 requests/s, p99 4.5 to
        # 1.6 ms, every sync covering all 16 rather than 9. Other processes still preempt
        # the ingest as before, and its share of the CPU is the same.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        policy = ", SCHED_BATCH"
    log.info("%s: running on CPU %s%s (the ingest's CPU is %d)",
             program, ",".join(map(str, sorted(cpus))), policy, ingest_cpu)


def unpin_this_thread():
    """Let the calling thread run on every CPU the process could before place_on_cpus pinned
    it: for a thread whose work runs in C without the GIL (SQLite), and so can use another
    core without contending with the pinned threads."""
    if _ALLOWED_CPUS and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, _ALLOWED_CPUS)  # on Linux, 0 is the calling thread


class Signals:
    """SIGTERM and SIGINT ask the program to stop (`stop`); with `hangup`, SIGHUP asks it to
    read its files again (`hangup`, which the program clears once done).

    The handlers only note the request, and the program acts on it at a point of its own
    choosing. A handler that did the work (or raised, as Python's default SIGINT does) would
    run at whatever instruction the main thread was at: a worker's commit half done, or the
    ingest's loop between sending an answer and marking it sent, which then sends it again,
    where the client takes it for its next request's answer: an event acknowledged and never
    written (tests/test_ingest_faults.py).

    `wakeup` becomes readable when a signal arrives (signal.set_wakeup_fd): Python retries an
    interrupted sleep, select or poll (PEP 475), so a loop sleeping on it would otherwise not
    see the request until it woke for something else. drain() empties it.
    """

    def __init__(self, hangup=False):
        self.stop = False
        self.hangup = False
        self.wakeup, write_end = os.pipe()
        os.set_blocking(self.wakeup, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end)
        signal.signal(signal.SIGTERM, self._note)
        signal.signal(signal.SIGINT, self._note)  # even where SIGINT was inherited ignored
        if hangup:
            signal.signal(signal.SIGHUP, self._note)

    def _note(self, signum, frame):
        if signum == signal.SIGHUP:
            self.hangup = True
        else:
            self.stop = True

    def drain(self):
        try:
            while os.read(self.wakeup, 512):
                pass
        except BlockingIOError:
            pass

    def wait(self, seconds):
        """Sleep up to `seconds`, or until a signal arrives; True if a stop was asked for."""
        if not self.stop:
            readable, _, _ = select.select([self.wakeup], [], [], seconds)
            if readable:
                self.drain()  # so the next wait sleeps again
        return self.stop


def die(log, message):
    """Exit at once, without unwinding: the state on disk is no longer known."""
    log.critical("%s; exiting so that recovery starts from what is on disk", message)
    logging.shutdown()
    os._exit(EXIT_STATE_UNKNOWN)
