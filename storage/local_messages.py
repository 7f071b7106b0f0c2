"""Messages over a local (Unix) socket between the ingest and the worker on one machine: a
4-byte big-endian length, then the message's JSON (storage/stream/reads.py's documents, as
cluster mode sends them over NATS). worker/overview_answers.py answers; WorkerOverview
asks, for the ingest (app/readside.py) and for `python -m worker status`."""

import socket
import struct

from storage.stream import reads
from storage.views.overview_store import NoOverview, OverviewState

LENGTH = struct.Struct(">I")
# How long a read waits for the worker's answer: a read over 30 days of 1,000 experiences
# and 2 M screen views takes about a second.
TIMEOUT = 10.0
MAX_MESSAGE = 64 * 1024 * 1024  # a length beyond this is damage, not a message


def read_message(stream):
    """The next message from a file-like `stream` (a socket's makefile("rb")), or None at its
    end. Raises ValueError for a length beyond MAX_MESSAGE or a body that is not JSON."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    length, = LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        raise ValueError(f"a message of {length} bytes")
    body = stream.read(length)
    if len(body) < length:
        return None
    return reads.decode(body)


def message(document):
    """`document` as sent: its length, then its JSON."""
    body = reads.encode(document)
    return LENGTH.pack(len(body)) + body


def ask(path, question, timeout):
    """Send `question` to the socket at `path` and return the answer, waiting at most
    `timeout` seconds for each step. Raises OSError (nobody listening, a timeout) or
    ValueError (an answer that is not one), or EOFError if the connection closes first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conversation:
        conversation.settimeout(timeout)
        conversation.connect(str(path))
        conversation.sendall(message(question))
        with conversation.makefile("rb") as answers:
            answer = read_message(answers)
    if answer is None:
        raise EOFError("the connection closed without an answer")
    return answer


class WorkerOverview:
    """The overview's reads (app/readside.py's OverviewReads) asked of the worker on one
    machine when it keeps the overview in overview.duckdb (MINI_ANALYTICS_OVERVIEW_STORE=
    duckdb), which only the worker can open, over its socket at `path`."""

    def __init__(self, path, timeout=TIMEOUT):
        self.path = path
        self.timeout = timeout

    def run(self, calls, project=""):
        """The rows of each read in `calls` of `project`'s experiences, from one snapshot of
        the worker's store. Raises NoOverview when the worker does not answer (not running,
        restarting) or cannot."""
        try:
            answer = ask(self.path, {"calls": [list(call) for call in calls],
                                     "project": project}, self.timeout)
        except (OSError, ValueError, EOFError) as error:
            raise NoOverview(f"the worker does not answer the overview's reads ({error})") \
                from None
        if "error" in answer:
            raise NoOverview(f"the worker could not answer: {answer['error']}")
        return [reads.decode_rows(rows) for rows in answer["results"]]

    def state(self):
        """The store's OverviewState. Raises NoOverview as run() does."""
        (state,), = self.run([("state",)])
        return OverviewState(*state)
