"""The baselines: bare WSGI apps on waitress that read the body and answer at once.

    close:      204 with no Content-Length. waitress then closes the connection after each
                answer, so every request pays for a new TCP connection.
    keepalive:  202 with the ingest's own small JSON body and a Content-Length, so the
                connection is kept alive exactly as it is for the ingest.

Run with the ingest's thread count and placed on the CPUs the way the ingest places itself
(MINI_ANALYTICS_INGEST_CPU), so a ratio measures only what the ingest adds (Bottle,
validation, the append and its sync).
"""

import logging
import sys

import waitress

from storage import process, settings

ACCEPTED = b'{"accepted": 1}'


def close_each_time(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("204 No Content", [])
    return [b""]


def keep_alive(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response(
        "202 Accepted",
        [("Content-Type", "application/json"), ("Content-Length", str(len(ACCEPTED)))],
    )
    return [ACCEPTED]


if __name__ == "__main__":
    port, threads, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # as the ingest does
    app = keep_alive if mode == "keepalive" else close_each_time
    # Before waitress starts threads; placed as the single-machine ingest is.
    process.place_on_cpus("ingest", settings.ingest_cpu(), batch=True)
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
