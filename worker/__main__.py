"""`python -m worker [run | status | rebuild]`

    run       count data1 into data2 every MINI_ANALYTICS_INTERVAL seconds (the default)
    status    print the offset, lag, last checkpoint and top counts (takes no lock)
    rebuild   recount data2 from all of data1 (refused while a worker runs)
"""

import logging
import sys

from app import config
from app.lockfile import AlreadyLocked
from worker import cli
from worker.runner import Worker

log = logging.getLogger("worker")


def run(state_dir):
    try:
        interval = config.interval()
    except config.ConfigError as error:
        print(f"mini-analytics worker: {error}", file=sys.stderr)
        return 2
    log.info("worker starting: state_dir=%s interval=%gs", state_dir, interval)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        Worker(state_dir).run(interval)
    except AlreadyLocked:
        log.error("another worker is already running on %s; exiting", state_dir)
        return 1
    except OSError as error:
        # Rule: an error persisting state ends the process. Nothing half-done is trusted:
        # the next worker starts from the last checkpoint that was fully committed.
        log.critical("I/O error in state folder %s: %s; exiting", state_dir, error)
        return 1
    return 0


def rebuild(state_dir):
    try:
        return cli.rebuild(state_dir)
    except AlreadyLocked:
        print(
            f"a worker is running on {state_dir} (it holds worker.lock); stop it first, "
            "e.g. supervisorctl -c supervisord.conf stop worker",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nrebuild interrupted; data2 holds its last committed checkpoint", file=sys.stderr)
        return 130


COMMANDS = {"run": run, "status": cli.status, "rebuild": rebuild}


def main(argv):
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    command = argv[0] if argv else "run"
    if command not in COMMANDS or len(argv) > 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        state_dir = config.state_dir()
    except config.ConfigError as error:
        print(f"mini-analytics worker: {error}", file=sys.stderr)
        return 2
    return COMMANDS[command](state_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
