"""`python -m worker`: count data1 into data2 every MINI_ANALYTICS_INTERVAL seconds."""

import logging
import sys

from app import config
from app.lockfile import AlreadyLocked
from worker.runner import Worker

log = logging.getLogger("worker")


def main():
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        interval, state_dir = config.interval(), config.state_dir()
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


if __name__ == "__main__":
    sys.exit(main())
