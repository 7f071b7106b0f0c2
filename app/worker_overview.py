"""The ingest's side of the overview's reads on one machine: asked of the worker over its
socket (worker/overview_answers.py answers; storage/local_messages.py and
storage/stream/reads.py have the format), as app/readside.py's OverviewReads."""

import socket

from storage.local_messages import message, read_message
from storage.stream import reads
from storage.views.overview_store import NoOverview

# How long a read waits for the worker's answer: a read over 30 days of 1,000 experiences
# takes a few hundred milliseconds.
TIMEOUT = 5.0


class WorkerOverview:
    def __init__(self, path, timeout=TIMEOUT):
        self.path = path
        self.timeout = timeout

    @staticmethod
    def pieces(start, end):
        """One: the worker's store answers any range at once (FactReader.pieces)."""
        return [(0, start, end)]

    def run(self, calls, project=""):
        """The rows of each read in `calls` of `project`'s experiences, from one snapshot of
        the worker's store. Raises NoOverview when the worker does not answer (not running,
        restarting) or cannot."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conversation:
                conversation.settimeout(self.timeout)
                conversation.connect(str(self.path))
                conversation.sendall(message({"calls": [list(call) for call in calls],
                                              "project": project}))
                with conversation.makefile("rb") as answers:
                    answer = read_message(answers)
        except (OSError, ValueError) as error:
            raise NoOverview(f"the worker does not answer the overview's reads ({error})") \
                from None
        if answer is None:
            raise NoOverview("the worker closed the connection without an answer")
        if "error" in answer:
            raise NoOverview(f"the worker could not answer: {answer['error']}")
        return [reads.decode_rows(rows) for rows in answer["results"]]
