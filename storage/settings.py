"""Configuration: every MINI_ANALYTICS_* environment variable, parsed and checked in one place.

The README's configuration table lists the same variables. A bad value is a ConfigError whose
message names the variable; each program reports it (storage/process.py) and exits with
code 2 before it touches anything on disk.
"""

import difflib
import ipaddress
import math
import os
import re
from pathlib import Path

PREFIX = "MINI_ANALYTICS_"
DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / "state"

# Every setting, its default and what it does: what `--help` prints, and what a misspelt name
# is matched against. The README's configuration table says the same at more length.
SETTINGS = [
    ("INTERVAL", "5", "seconds between worker passes (0.01 to 86400)"),
    ("STALLED_AFTER", "max(3 x interval, 30)", "seconds an event may wait to be counted "
                                               "before the worker is called stalled"),
    ("HOST", "127.0.0.1", "address the ingest API binds to"),
    ("PORT", "8000", "port of the ingest API"),
    ("INGEST_CPU", "auto", "the CPU the ingest keeps its threads on: auto, a CPU number, all"),
    ("THREADS", "16", "the ingest's waitress threads (1 to 256)"),
    ("FSYNC", "on", "on: a 202 means on disk; off: no sync per request"),
    ("SERIES", "on", "whether the worker keeps the counts over time"),
    ("MINUTE_RETENTION_HOURS", "48", "hours of minute buckets kept before the newest event"),
    ("OVERVIEW", "on", "whether the worker keeps the experience overview (users, sessions)"),
    ("OVERVIEW_STORE", "sqlite", "the overview's store: sqlite or duckdb"),
    ("SESSION_TIMEOUT", "1800", "seconds without a screen view that end a session (60 to "
                                "86400)"),
    ("WRITE_TOKENS", "(none: writes open)", "tokens that may write, comma-separated; needed "
                                             "to listen beyond loopback"),
    ("WRITE_TOKENS_FILE", "(none)", "a file of write tokens, one a line, read again on "
                                    "SIGHUP or when it changes"),
    ("READ_TOKENS", "(none: reads open)", "tokens that may read the counts and the dashboard, "
                                          "comma-separated"),
    ("READ_TOKENS_FILE", "(none)", "a file of read tokens, one a line, read again on SIGHUP "
                                   "or when it changes"),
    ("PROJECTS_FILE", "(none: one project)", "a TOML file of projects, each with its write "
                                             "and read tokens, and admin tokens that read "
                                             "them all; read again on SIGHUP or when it "
                                             "changes"),
    ("TRUSTED_PROXY", "(none)", "the address of a reverse proxy whose X-Forwarded-For is "
                                "believed"),
    ("DEDUPE_WINDOW", "86400", "seconds an SDK event id is remembered, so that a retry is "
                               "counted once (0: off; 60 to 2592000)"),
    ("STATE_DIR", "state/ beside the code", "folder of data1, data2, locks and logs"),
    ("CLUSTER", "(unset: one machine)", "cluster mode: NATS server URLs, comma-separated"),
    ("PARTITION_COUNT", "(the stream's; 8 for a new one)", "cluster mode: the stream's "
                                                            "partitions, fixed when it is "
                                                            "created (1 to 256)"),
    ("TAKEOVER", "15", "cluster mode: seconds without a sign of life after which a worker's "
                       "partitions are taken over (2 to 600)"),
    ("REPLICAS", "3", "cluster mode: copies of the stream and checkpoints (1, 3 or 5)"),
    ("PUBLISH_TIMEOUT", "10", "cluster mode: seconds a publish is retried before a 503"),
    ("CLUSTER_PORT_BASE", "7000", "cluster/supervisord.conf: shifts every port of the local "
                                  "cluster"),
]


def help_table():
    """The settings as `python -m app --help` and `python -m worker --help` list them."""
    width = max(len(PREFIX + name) for name, _, _ in SETTINGS)
    lines = ["Settings (environment variables; README, Configuration):"]
    lines += [f"  {PREFIX + name:<{width}}  {meaning} (default: {default})"
              for name, default, meaning in SETTINGS]
    return "\n".join(lines)


def unknown(environ=os.environ):
    """One warning for each MINI_ANALYTICS_* variable that is no setting (a misspelt name is
    otherwise silently ignored, and its default used), naming the closest setting."""
    known = [name for name, _, _ in SETTINGS]
    warnings = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name[len(PREFIX):] not in known:
            # Matched without the prefix, which every name shares and would make all alike.
            closest = difflib.get_close_matches(name[len(PREFIX):], known, n=1, cutoff=0.6)
            hint = (f"did you mean {PREFIX}{closest[0]}?" if closest
                    else "see --help for the settings")
            warnings.append(f"{name} is not a setting and is ignored ({hint})")
    return warnings


class ConfigError(Exception):
    pass


def _raw(environ, name):
    # Unset and empty both mean "use the default": `MINI_ANALYTICS_X= cmd` is a common way
    # to clear a setting.
    return environ.get(PREFIX + name, "").strip()


def state_dir(environ=os.environ):
    """The state folder. It may be missing (the programs create it), but its parent must
    exist: a mistyped path is an error, never a tree of new folders."""
    raw = _raw(environ, "STATE_DIR")
    path = Path(raw).resolve() if raw else DEFAULT_STATE_DIR
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{PREFIX}STATE_DIR is not a folder: {path}")
    if not path.exists() and not path.parent.is_dir():
        raise ConfigError(
            f"{PREFIX}STATE_DIR {path} does not exist, and neither does its parent folder "
            f"{path.parent}; create it first if that is really the place"
        )
    return path


def host(environ=os.environ):
    return _raw(environ, "HOST") or "127.0.0.1"


def is_loopback(address):
    """True for an address only this machine can reach: localhost, 127.x.x.x, ::1."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def token_problem(token):
    """Why `token` cannot be a token, or None: 16 to 256 visible ASCII characters, no comma."""
    if not 16 <= len(token) <= 256:
        return f"a token must be 16 to 256 characters long, got one of {len(token)}"
    if not all(0x21 <= ord(char) <= 0x7E and char != "," for char in token):
        return "a token must be visible ASCII characters other than a comma"
    return None


def tokens(kind, environ=os.environ):
    """(tokens, file) for kind "WRITE" or "READ": the list in MINI_ANALYTICS_<kind>_TOKENS,
    or the file named by MINI_ANALYTICS_<kind>_TOKENS_FILE (app/access.py reads it); ([],
    None) when neither is set. A token itself is never put in an error message."""
    listed, named = _raw(environ, f"{kind}_TOKENS"), _raw(environ, f"{kind}_TOKENS_FILE")
    if listed and named:
        raise ConfigError(f"{PREFIX}{kind}_TOKENS and {PREFIX}{kind}_TOKENS_FILE are both set: "
                          "give the tokens one way")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"{PREFIX}{kind}_TOKENS_FILE names no file: {path}")
        return [], path
    found = [token.strip() for token in listed.split(",") if token.strip()]
    for number, token in enumerate(found, 1):
        problem = token_problem(token)
        if problem:
            raise ConfigError(f"{PREFIX}{kind}_TOKENS: token {number}: {problem}")
    return found, None


def projects_file(environ=os.environ):
    """The projects file's path (app/projects.py reads it), or None when there is none."""
    raw = _raw(environ, "PROJECTS_FILE")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}PROJECTS_FILE names no file: {path}")
    return path


def trusted_proxy(environ=os.environ):
    """The reverse proxy's address, whose X-Forwarded-For names the real client; or None."""
    raw = _raw(environ, "TRUSTED_PROXY")
    if not raw:
        return None
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}TRUSTED_PROXY must be the proxy's IP address (like "
                          f"127.0.0.1), got {raw!r}") from None
    return raw


def port(environ=os.environ):
    raw = _raw(environ, "PORT")
    if not raw:
        return 8000
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{PREFIX}PORT must be a port number from 1 to 65535, got {raw!r}")
    return int(raw)


def threads(environ=os.environ):
    raw = _raw(environ, "THREADS")
    if not raw:
        return 16
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise ConfigError(f"{PREFIX}THREADS must be a whole number from 1 to 256, got {raw!r}")
    return int(raw)


def fsync(environ=os.environ):
    return _switch(environ, "FSYNC", True)


def _seconds(environ, name, default, low, high, example, unit="seconds"):
    raw = _raw(environ, name)
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not low <= seconds <= high:  # NaN fails every comparison
        raise ConfigError(
            f"{PREFIX}{name} must be a number of {unit} from {low:g} to {high:g} "
            f"(like {example}), got {raw!r}"
        )
    return seconds


def _switch(environ, name, default):
    raw = _raw(environ, name).lower()
    if raw in ("1", "on", "true", "yes") or (not raw and default):
        return True
    if raw in ("0", "off", "false", "no") or not raw:
        return False
    raise ConfigError(f"{PREFIX}{name} must be on or off, got {raw!r}")


def series(environ=os.environ):
    """Whether the worker keeps the counts over time (series.sqlite3)."""
    return _switch(environ, "SERIES", True)


def overview(environ=os.environ):
    """Whether the worker keeps the experience overview (overview.sqlite3)."""
    return _switch(environ, "OVERVIEW", True)


def overview_store(environ=os.environ):
    """Which store the worker keeps the overview in: "sqlite" (overview.sqlite3, the rows of
    every answer kept at each commit) or "duckdb" (overview.duckdb, the screen views kept
    and the answers worked out when asked; storage/views/overview_facts.py); in cluster
    mode, one such store per partition."""
    raw = _raw(environ, "OVERVIEW_STORE").lower() or "sqlite"
    if raw not in ("sqlite", "duckdb"):
        raise ConfigError(f"{PREFIX}OVERVIEW_STORE must be sqlite or duckdb, got {raw!r}")
    return raw


def session_timeout(environ=os.environ):
    """Seconds without a screen view that end a session, a whole number."""
    seconds = _seconds(environ, "SESSION_TIMEOUT", 1800.0, 60.0, 86400.0, "1800")
    if seconds != int(seconds):
        raise ConfigError(f"{PREFIX}SESSION_TIMEOUT must be a whole number of seconds, "
                          f"got {_raw(environ, 'SESSION_TIMEOUT')!r}")
    return int(seconds)


def minute_retention(environ=os.environ):
    """Seconds of minute buckets kept before the newest event (hours are kept for good)."""
    hours = _seconds(environ, "MINUTE_RETENTION_HOURS", 48.0, 1.0, 24.0 * 366, "48", "hours")
    return int(hours * 3600)


def dedupe_window(environ=os.environ):
    """Seconds an SDK event's id is remembered, as a whole number; 0 turns dedupe off."""
    seconds = _seconds(environ, "DEDUPE_WINDOW", 86400.0, 0.0, 30 * 86400.0, "86400")
    if seconds and seconds < 60:
        raise ConfigError(f"{PREFIX}DEDUPE_WINDOW must be 0 (off) or at least 60 seconds, "
                          f"got {_raw(environ, 'DEDUPE_WINDOW')!r}")
    return int(seconds)


def interval(environ=os.environ):
    # At least 10 ms: a smaller interval is a busy loop, not a schedule.
    return _seconds(environ, "INTERVAL", 5.0, 0.01, 86400.0, "5 or 0.5")


def stalled_after(environ=os.environ):
    """Seconds an event may wait to be counted before the worker is reported stalled."""
    default = max(3 * interval(environ), 30.0)
    return _seconds(environ, "STALLED_AFTER", default, 1.0, 7 * 86400.0, "30")


def ingest_cpu(environ=os.environ, allowed=None):
    """The CPU the ingest keeps its threads on, or None to leave its affinity alone.

    Python runs one thread at a time; threads that wake on different cores pass the GIL
    between cores on every system call, which costs more than the calls. "auto" (the
    default) picks the last CPU this process may use when there are two or more (CPU 0 is
    the one most kernels send the most interrupts to), and none on a single CPU.
    """
    raw = _raw(environ, "INGEST_CPU").lower() or "auto"
    if allowed is None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if raw == "all" or (raw == "auto" and len(allowed) < 2):
        return None
    if raw == "auto":
        return max(allowed)
    if not raw.isdigit() or int(raw) not in allowed:
        raise ConfigError(
            f"{PREFIX}INGEST_CPU must be auto, all, or one of the CPUs this process may use "
            f"({', '.join(map(str, sorted(allowed))) or 'none known'}), got {raw!r}"
        )
    return int(raw)


# Cluster mode (docs/cluster.md): set MINI_ANALYTICS_CLUSTER and the log and the
# checkpoints live in NATS JetStream instead of data1 and data2.

def cluster(environ=os.environ):
    """The NATS servers to use (a list of nats:// URLs), or None for the single-machine mode."""
    raw = _raw(environ, "CLUSTER")
    if not raw:
        return None
    urls = [url.strip() for url in raw.split(",") if url.strip()]
    for url in urls:
        if not re.fullmatch(r"nats://[^\s/:]+:\d{1,5}", url):
            raise ConfigError(
                f"{PREFIX}CLUSTER must be NATS server URLs separated by commas, like "
                f"nats://127.0.0.1:4222,nats://127.0.0.1:4223, got {url!r}"
            )
    return urls


# A stream created without MINI_ANALYTICS_PARTITION_COUNT gets this many partitions: more
# than the workers of a small cluster, so that it can grow to as many workers without
# changing the count (storage/stream/setup.py says why the count cannot change).
DEFAULT_PARTITION_COUNT = 8


def partition_count(environ=os.environ):
    """The number of partitions asked for, or None to take the stream's (DEFAULT_PARTITION_COUNT
    for a stream not yet created)."""
    raw = _raw(environ, "PARTITION_COUNT")
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise ConfigError(f"{PREFIX}PARTITION_COUNT must be a whole number from 1 to 256, "
                          f"got {raw!r}")
    return int(raw)


def takeover(environ=os.environ):
    """Seconds a worker's lease may go unrenewed before another worker takes its partition."""
    return _seconds(environ, "TAKEOVER", 15.0, 2.0, 600.0, "15")


def replicas(environ=os.environ):
    """How many copies of the stream and the checkpoints JetStream keeps."""
    raw = _raw(environ, "REPLICAS")
    if not raw:
        return 3
    if raw not in ("1", "3", "5"):
        raise ConfigError(f"{PREFIX}REPLICAS must be 1, 3 or 5 (an odd number: Raft needs a "
                          f"majority), got {raw!r}")
    return int(raw)


def publish_timeout(environ=os.environ):
    """Seconds an ingest node keeps retrying a publish before answering 503."""
    return _seconds(environ, "PUBLISH_TIMEOUT", 10.0, 0.5, 60.0, "10")
