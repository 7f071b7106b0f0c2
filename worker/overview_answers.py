"""How the worker answers the overview's reads on one machine: over a Unix socket in the
state folder (storage/layout.py's worker.sock), since overview.duckdb opens in one process
only (storage/views/overview_facts.py). storage/local_messages.WorkerOverview asks.

The questions and answers are the cluster's (storage/stream/reads.py: {"calls", "project"}
-> {"position", "results"} or {"error"}), each a message of storage/local_messages.py. A
connection may ask many questions, one at a time; each is answered from one snapshot of the
store.
"""

import logging
import os
import socketserver
import threading

from storage.local_messages import message, read_message
from storage.stream import reads

log = logging.getLogger("worker")


class OverviewAnswers:
    """Serve `reader` (storage/views/overview_facts.FactReader) on the socket at `path`;
    `position()` is the store's position, sent with each answer."""

    def __init__(self, path, reader, position):
        self.path = path
        self.reader = reader
        self.position = position
        self._server = None
        self._thread = None

    def start(self):
        try:
            os.unlink(self.path)  # a socket left by a worker that died: nobody listens on it
        except FileNotFoundError:
            pass
        self._server = _Server(os.fspath(self.path), _Handler)
        self._server.answers = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="overview-answers", daemon=True)
        self._thread.start()

    def answer(self, question):
        try:
            calls, project = question["calls"], question.get("project", "")
            results = self.reader.run(calls, project)
        except Exception as error:  # noqa: BLE001 (any question it cannot answer, named)
            log.warning("overview: a read could not be answered: %s: %s",
                        type(error).__name__, error)
            return {"error": f"{type(error).__name__}: {error}"}
        return {"position": self.position(), "results": [reads.encode_rows(rows)
                                                         for rows in results]}

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            try:
                question = read_message(self.rfile)
            except ValueError as error:
                self.wfile.write(message({"error": f"not a question: {error}"}))
                return
            if question is None:
                return
            self.wfile.write(message(self.server.answers.answer(question)))
