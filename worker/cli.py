"""The worker's operator commands: `status` (read-only, takes no lock) and `rebuild`."""

import os
import sys
import time

from app.readside import checkpoint_age
from app.log_format import DATA1
from worker import checkpoint
from worker.checkpoint import DATA2, CorruptCheckpoint
from worker.runner import Worker

TOP = 10


def data1_size(state_dir):
    try:
        return os.stat(os.path.join(state_dir, DATA1)).st_size
    except FileNotFoundError:
        return 0


def status(state_dir, out=sys.stdout):
    """Print where the worker stands. Reads data1's size and data2; takes no lock."""
    data1_bytes = data1_size(state_dir)
    try:
        current = checkpoint.load(os.path.join(state_dir, DATA2))
    except CorruptCheckpoint as problem:
        print(f"data2 is unreadable: {problem}", file=sys.stderr)
        print("the worker will set it aside and recount data1 when it starts", file=sys.stderr)
        return 1
    rows = [("state folder", str(state_dir)), ("data1", f"{data1_bytes:,} bytes")]
    if current is None:
        rows.append(("checkpoint", "none yet: the worker has not committed one"))
        rows.append(("lag", f"{data1_bytes:,} bytes"))
    else:
        age = checkpoint_age(current.updated_at)
        rows += [
            ("checkpoint", f"{current.updated_at} ({age:.1f} s ago)"),
            ("offset", f"{current.offset:,}"),
            ("lag", f"{max(0, data1_bytes - current.offset):,} bytes"),
            ("counted", f"{current.events:,} events, {len(current.counts):,} experiences, "
                        f"{current.skipped:,} skipped"),
        ]
    for label, value in rows:
        print(f"{label:<14} {value}", file=out)
    if current and current.counts:
        print(f"top {min(TOP, len(current.counts))} experiences", file=out)
        top = current.top(TOP)
        width = max(len(str(key)) for key, _ in top)
        for key, count in top:
            print(f"  {key:>{width}}  {count:,}", file=out)
    return 0


class ProgressBar:
    """A one-line progress bar on a terminal (or one line per second in a log)."""

    def __init__(self, total_bytes, out=sys.stderr, width=30):
        self.total = max(1, total_bytes)
        self.out, self.width = out, width
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.live = out.isatty()

    def __call__(self, offset, tokens, final=False):
        now = time.monotonic()
        if not final and now - self.shown_at < (0.1 if self.live else 1.0):
            return
        self.shown_at = now
        done = min(1.0, offset / self.total)
        filled = int(done * self.width)
        rate = tokens / max(now - self.started, 1e-9)
        line = (f"rebuild [{'#' * filled}{'-' * (self.width - filled)}] {done:6.1%}  "
                f"{offset / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  {rate / 1e6:.2f} M events/s")
        self.out.write(("\r" + line) if self.live else line + "\n")
        if final and self.live:
            self.out.write("\n")
        self.out.flush()


def rebuild(state_dir):
    """Recount data2 from data1 from scratch, with a progress bar."""
    bar = ProgressBar(data1_size(state_dir))
    started = time.monotonic()
    worker = Worker(state_dir)
    result = worker.rebuild(progress=bar)
    bar(result.offset, result.events + result.skipped, final=True)
    print(
        f"rebuilt data2 in {time.monotonic() - started:.2f} s: offset {result.offset:,}, "
        f"{result.events:,} events, {len(result.counts):,} experiences, "
        f"{result.skipped:,} skipped",
        file=sys.stderr,
    )
    return 0
