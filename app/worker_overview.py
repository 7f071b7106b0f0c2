"""The ingest's side of the overview's reads on one machine when the worker keeps it in
overview.duckdb (MINI_ANALYTICS_OVERVIEW_STORE=duckdb): asked of the worker over its socket
(worker/overview_answers.py answers; storage/local_messages.py and storage/stream/reads.py
have the format), as app/readside.py's OverviewReads."""

from storage.local_messages import ask
from storage.stream import reads
from storage.views.overview_store import NoOverview

# How long a read waits for the worker's answer: a read over 30 days of 1,000 experiences
# and 2 M screen views takes about a second.
TIMEOUT = 10.0


class WorkerOverview:
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
