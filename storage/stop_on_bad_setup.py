"""`python -m storage.stop_on_bad_setup REASON_FILE`: a supervisord event listener that ends
the whole run when a program exits with the bad-setup code (storage/process.py: 2).

Exit code 2 means a setup that no restart can mend (a bad setting, the port taken, another
instance on the same state folder), so supervisord leaves the program stopped. Without this
listener the run would go on in the foreground, looking alive, with a program missing. With
it:
* a program that finds its setup bad says why in supervisord's process communication
  (storage/process.py, bad_setup), which reaches this listener as one
  PROCESS_COMMUNICATION_STDOUT event: no event for ordinary output;
* on PROCESS_STATE_EXITED with exit status 2, the listener logs one line naming the program
  and its reason, writes the reason to REASON_FILE, and asks supervisord to shut down;
* `make run` (and `make cluster`) then print REASON_FILE as their last line and fail.
A crash (a SIGKILL, exit 1 or 70) is not its business: supervisord restarts it as before.

The protocol (supervisord's "Events" documentation): write READY, read one header line and
the payload it announces, answer RESULT 2 OK. stdout is the protocol's, so this listener's
own line goes to stderr, as a log line like the programs' (written whole, in one write).
"""

import logging
import os
import signal
import sys
from pathlib import Path

from supervisor import childutils

from storage.process import EXIT_BAD_SETUP, log_to_stderr

log = logging.getLogger("mini-analytics")


def next_event(stdin, stdout):
    """(headers, payload) of the next event. In bytes, not text: `len` counts bytes, and a
    program's words may hold any UTF-8 (childutils' own wait() reads characters)."""
    stdout.write(b"READY\n")
    stdout.flush()
    headers = childutils.get_headers(stdin.readline().decode())
    return headers, stdin.read(int(headers["len"])).decode("utf-8", "replace")


def done(stdout):
    stdout.write(b"RESULT 2\nOK")
    stdout.flush()


def program_of(header_line):
    """The "group:process" name supervisorctl knows a program by, from a payload's header."""
    fields = childutils.get_headers(header_line)
    return f"{fields['groupname']}:{fields['processname']}"


def listen(reason_file, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer):
    rpc = childutils.getRPCInterface(os.environ)
    reasons = {}  # "group:process" -> the bad setup it reported
    stopping = False
    while True:
        headers, payload = next_event(stdin, stdout)
        if headers["eventname"] == "PROCESS_COMMUNICATION_STDOUT":
            header_line, _, words = payload.partition("\n")
            reasons[program_of(header_line)] = words.strip()
        elif headers["eventname"] == "PROCESS_STATE_EXITED" and not stopping:
            name = program_of(payload)
            info = rpc.supervisor.getProcessInfo(name)
            if info["exitstatus"] == EXIT_BAD_SETUP:
                stopping = True
                reason = (f"{info['name']} cannot run (exit status 2: a bad setup, which a "
                          f"restart cannot mend): "
                          f"{reasons.get(name) or 'it gave no reason; see its log'}")
                Path(reason_file).write_text(reason + "\n")
                log.critical("%s; stopping everything", reason)
                rpc.supervisor.shutdown()
        done(stdout)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m storage.stop_on_bad_setup REASON_FILE")
    log_to_stderr()
    # supervisord's stop is SIGTERM: a stop that was asked for, so exit 0 (logged as such).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    listen(sys.argv[1])
