"""`python -m storage.stop_on_bad_setup REASON_FILE`: a supervisord event listener that ends
the whole run when a program exits with the bad-setup code (storage/process.py: 2).

Exit code 2 means a setup that no restart can mend (a bad setting, the port taken, another
instance on the same state folder), so supervisord leaves the program stopped. Without this
listener the run would go on in the foreground, looking alive, with a program missing. With
it:
* each program's last error line (its one line saying why; else its last line) is kept,
  from the output supervisord passes on as PROCESS_LOG_STDOUT events;
* on PROCESS_STATE_EXITED with exit status 2, the listener writes one line naming the program
  and that reason to stderr and to REASON_FILE, and asks supervisord to shut down;
* `make run` (and `make cluster`) then print REASON_FILE as their last line and fail.
A crash (a SIGKILL, exit 1 or 70) is not its business: supervisord restarts it as before.

The protocol (supervisord's "Events" documentation): write READY, read one header line and
the payload it announces, answer RESULT 2 OK; stdout is the protocol's, so this listener's
own line goes to stderr, as a log line like the programs' (written whole, in one write).
"""

import logging
import os
import re
import signal
import sys
from pathlib import Path

from supervisor import childutils

from storage.process import EXIT_BAD_SETUP, LOG_FORMAT

log = logging.getLogger("mini-analytics")

# A log line's "<date> <time> <program> <LEVEL> " prefix (storage/process.py's LOG_FORMAT).
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S+ ([A-Z]+) ")
ERROR_LEVELS = ("ERROR", "CRITICAL")


def reason_for(name, reasons, info):
    program = name.split(":")[1]  # supervisorctl's group:process; the process names it
    return (f"{program} cannot run (exit status {info['exitstatus']}: a bad setup, which a "
            f"restart cannot mend): {reasons.get(name) or 'it printed no reason'}")


def keep_reason(reasons, name, line):
    """Keep `line` as `name`'s reason if it is an error line, or if none was kept yet."""
    prefix = LOG_PREFIX.match(line)
    if prefix is None or prefix.group(1) in ERROR_LEVELS or name not in reasons:
        message = line[prefix.end():] if prefix else line
        reasons[name] = message.strip().removesuffix("; exiting")


def next_event(stdin, stdout):
    """(headers, payload) of the next event. In bytes, not text: `len` counts bytes, and a
    program's output may hold any UTF-8 (childutils' own wait() reads characters)."""
    stdout.write(b"READY\n")
    stdout.flush()
    headers = childutils.get_headers(stdin.readline().decode())
    return headers, stdin.read(int(headers["len"])).decode("utf-8", "replace")


def done(stdout):
    stdout.write(b"RESULT 2\nOK")
    stdout.flush()


def listen(reason_file, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer):
    rpc = childutils.getRPCInterface(os.environ)
    reasons = {}  # "group:process" -> its last error line (else its last line), unprefixed
    partial = {}  # "group:process" -> output after its last newline
    stopping = False
    while True:
        headers, payload = next_event(stdin, stdout)
        if headers["eventname"] == "PROCESS_LOG_STDOUT":
            head, _, data = payload.partition("\n")
            fields = childutils.get_headers(head)
            name = f"{fields['groupname']}:{fields['processname']}"
            lines = (partial.get(name, "") + data).split("\n")
            partial[name] = lines.pop()
            for line in lines:
                if line.strip():
                    keep_reason(reasons, name, line)
        elif headers["eventname"] == "PROCESS_STATE_EXITED" and not stopping:
            fields = childutils.get_headers(payload)
            name = f"{fields['groupname']}:{fields['processname']}"
            info = rpc.supervisor.getProcessInfo(name)
            if info["exitstatus"] == EXIT_BAD_SETUP:
                stopping = True
                reason = reason_for(name, reasons, info)
                Path(reason_file).write_text(reason + "\n")
                log.critical("%s; stopping everything", reason)
                rpc.supervisor.shutdown()
        done(stdout)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m storage.stop_on_bad_setup REASON_FILE")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    # supervisord's stop is SIGTERM: a stop that was asked for, so exit 0 (logged as such).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    listen(sys.argv[1])
