"""What every program of the engine does the same way: its log lines, its exit codes, and how
it reports a bad setting.

Exit codes, which supervisord.conf relies on (exitcodes=2: only a bad setting is "expected"):

    0   stopped when asked (SIGTERM/SIGINT)
    1   could not start or go on (state folder unusable, I/O error): supervisord restarts it
    2   a bad setting: restarting cannot help, so supervisord leaves the program stopped
    70  the state on disk is no longer known (a failed fsync or undo): exit at once and let
        the restart recover from what is really on disk (sysexits' EX_SOFTWARE)
"""

import logging
import os
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTING = 2
EXIT_STATE_UNKNOWN = 70

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def start_logging():
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)


def bad_setting(program, error):
    """Report a bad setting in one line; return the exit code for it."""
    print(f"mini-analytics {program}: {error}", file=sys.stderr)
    return EXIT_BAD_SETTING


def die(log, message):
    """Exit at once, without unwinding: the state on disk is no longer known."""
    log.critical("%s; exiting so that recovery starts from what is on disk", message)
    logging.shutdown()
    os._exit(EXIT_STATE_UNKNOWN)
