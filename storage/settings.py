"""Configuration: every MINI_ANALYTICS_* environment variable, parsed and checked in one place.

The README's configuration table lists the same variables. A bad value is a ConfigError whose
message names the variable; each program reports it (storage/process.py) and exits with
code 2 before it touches anything on disk.
"""

import math
import os
from pathlib import Path

PREFIX = "MINI_ANALYTICS_"
DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / "state"


class ConfigError(Exception):
    pass


def _raw(environ, name):
    # Unset and empty both mean "use the default": `MINI_ANALYTICS_X= cmd` is a common way
    # to clear a setting.
    return environ.get(PREFIX + name, "").strip()


def state_dir(environ=os.environ):
    raw = _raw(environ, "STATE_DIR")
    return Path(raw).resolve() if raw else DEFAULT_STATE_DIR


def host(environ=os.environ):
    return _raw(environ, "HOST") or "127.0.0.1"


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
    raw = _raw(environ, "FSYNC").lower()
    if raw in ("", "1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{PREFIX}FSYNC must be on or off, got {raw!r}")


def interval(environ=os.environ):
    raw = _raw(environ, "INTERVAL")
    if not raw:
        return 5.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"{PREFIX}INTERVAL must be a positive number of seconds (like 5 or 0.5), got {raw!r}"
        )
    return seconds
