"""The fixtures. The machinery they use lives in helper modules the tests import directly:

    http_client.py  requests, the readiness probe, polling with deadlines
    reference.py    the reference model of data1 and the data1/data2 invariant
    processes.py    real ingest, worker and supervisord processes, cleaned up after each test
    ledger.py       posting clients with ledgers, the set checkers, the invariant watcher
    clocks.py       an injected clock for unit tests
"""

import shutil

import pytest

from http_client import free_port
from processes import Procs, Supervisor, copy_of_the_code, short_temp_dir


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (item.failed_call), for fixtures that keep what a
    failing test leaves."""
    report = yield
    if report.when == "call":
        item.failed_call = report.failed
    return report


@pytest.fixture
def procs(tmp_path):
    registry = Procs(tmp_path)
    yield registry
    registry.cleanup()


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def supervisor():
    """Start the shipped supervisord.conf (on a copy of the code) with the given settings."""
    root = short_temp_dir()
    copy_of_the_code(root)
    started = []

    def start(wait=True, path=None, **settings):
        sup = Supervisor(root, free_port(), path, **settings)
        started.append(sup)
        sup.start(wait)
        return sup

    start.root = root  # for a test that adds files beside the copy (a .venv, the Makefile)
    yield start
    for sup in started:
        sup.stop()
    shutil.rmtree(root, ignore_errors=True)
