"""The ingest's crash and fault matrix: a crash between write and fsync, short writes, ENOSPC
and EIO, a slow and a failing fsync, and a crash mid-token. Faults are injected by patching
os functions, in-process through the WSGI app or in a real process started through a small
wrapper."""

import errno
import io
import json
import os
import socket
import sys
import textwrap

import pytest

from http_client import free_port, post, request, wait_for
from processes import ready, service_env
from reference import valid_counts
from app.api import make_app
from app.readside import FileReadSide
from storage.log.writer import EventLog
from worker.runner import Worker


def wsgi_post(app, path, body, method="POST"):
    """One request straight through the WSGI app: (status code, decoded JSON body)."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "test", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
    }
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"] = int(status.split()[0])

    data = b"".join(app(environ, start_response))
    return answer["status"], json.loads(data)


@pytest.fixture
def app_and_log(state_dir):
    log = EventLog(state_dir / "data1")
    yield make_app(log, FileReadSide(log, state_dir, stalled_after=30)), log
    log.close()


@pytest.mark.parametrize("fault", ["ENOSPC", "EIO", "short write", "ENOSPC after part"])
@pytest.mark.parametrize("path, body", [
    ("/event", b'{"experienceID": 123456}'),
    ("/batch", b'{"batch": [{"experienceID": 7}, {"experienceID": 8}]}'),
])
def test_a_failed_append_is_a_503_leaves_nothing_and_the_service_goes_on(
    app_and_log, state_dir, monkeypatch, fault, path, body
):
    app, _ = app_and_log
    assert wsgi_post(app, "/event", b'{"experienceID": 1}')[0] == 202
    real_write = os.write

    def faulty_write(fd, data):
        if fault == "short write":
            return real_write(fd, bytes(data[:2]))
        if fault == "ENOSPC after part":
            real_write(fd, bytes(data[:2]))
        code = errno.EIO if fault == "EIO" else errno.ENOSPC
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", faulty_write)
    status, answer = wsgi_post(app, path, body)
    assert status == 503 and "data1" in answer["error"]
    assert (state_dir / "data1").read_bytes() == b"1 "
    monkeypatch.setattr(os, "write", real_write)
    assert wsgi_post(app, "/event", b'{"experienceID": 2}')[0] == 202
    assert (state_dir / "data1").read_bytes() == b"1 2 "


def test_a_details_header_written_in_part_is_cut_off_and_written_whole_next_time(
        state_dir, monkeypatch, caplog):
    """A disk that fills while data1.details' header is written: the ingest cannot open
    (and exits, to start again); the part written is cut off, so the next opening writes the
    header whole rather than find a file that is not a details file and set it aside."""
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, bytes(data[:5]))

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError, match="short write to data1.details"):
        EventLog(state_dir / "data1", details=state_dir / "data1.details",
                 seen=state_dir / "data1.seen")
    monkeypatch.setattr(os, "write", real_write)
    assert (state_dir / "data1.details").read_bytes() == b""
    log = EventLog(state_dir / "data1", details=state_dir / "data1.details",
                   seen=state_dir / "data1.seen")
    log.close()
    assert (state_dir / "data1.details").read_bytes()[:8] == b"MADETAIL"
    assert "set aside" not in caplog.text and "kept aside" not in caplog.text
    assert list(state_dir.glob("data1.details.*")) == []


def start_patched_ingest(procs, state_dir, patch, **settings):
    """A real ingest process with `patch` (Python source) applied before it starts."""
    port = free_port()
    source = textwrap.dedent(patch) + "\nfrom app.__main__ import main\nraise SystemExit(main([]))\n"
    proc = procs.spawn([sys.executable, "-c", source],
                       service_env(state_dir, port=port, **settings), "patched")
    proc.port = port
    wait_for(lambda: ready(proc), what="the patched ingest")
    return proc


def count_after_recovery(procs, state_dir):
    """Restart the ingest normally (repairing data1), then count with a worker pass."""
    ingest = procs.ingest(state_dir)
    worker = Worker(state_dir)
    worker.recover()
    worker.run_pass()
    worker.close()
    return ingest, dict((str(k), v) for k, v in worker.checkpoint.counts.items())


def test_a_crash_between_write_and_fsync(procs, state_dir):
    proc = start_patched_ingest(procs, state_dir, """
        import os
        os.fdatasync = lambda fd: os._exit(137)   # die after the write, before the sync
    """)
    with pytest.raises(OSError):  # the connection drops: no acknowledgement
        post(proc.port, {"experienceID": 5})
    assert proc.wait(timeout=10) == 137
    ingest, counts = count_after_recovery(procs, state_dir)
    # Never acknowledged, so it may be counted once or not at all; never twice.
    assert counts.get("5", 0) <= 1
    assert post(ingest.port, {"experienceID": 6})[0] == 202
    data1 = (state_dir / "data1").read_bytes()
    assert data1 in (b"5 6 ", b"6 ")


def start_slow_disk_ingest(procs, state_dir, tmp_path, stalled_after=5.0, **settings):
    """A real ingest whose fdatasync of data1 waits (as on a very slow disk) until the test
    creates proc.gate; it creates proc.entered when a sync starts waiting. `stalled_after`:
    when it calls the disk stalled (storage/log/writer.py's SYNC_STALLED_AFTER); admission
    looks at that on every write rather than once a second."""
    entered, gate = tmp_path / "sync-entered", tmp_path / "sync-may-finish"
    proc = start_patched_ingest(procs, state_dir, f"""
        import os, time
        import app.admission, storage.log.writer
        storage.log.writer.SYNC_STALLED_AFTER = {stalled_after!r}
        app.admission.PROBLEM_EVERY = 0.0
        real = os.fdatasync
        def fdatasync(fd):
            if os.readlink(f"/proc/self/fd/{{fd}}").endswith("/data1"):
                open({str(entered)!r}, "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                    time.sleep(0.005)  # a disk this slow
            real(fd)
        os.fdatasync = fdatasync
    """, **settings)
    proc.entered, proc.gate = entered, gate
    return proc


def send_event(port, experience_id):
    """A connection with one POST /event sent on it, its answer not read."""
    body = b'{"experienceID": %d}' % experience_id
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(b"POST /event HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return connection


def test_an_answer_waits_for_its_sync_and_its_thread_serves_others_meanwhile(
        procs, state_dir, tmp_path):
    """The 202 leaves only after the fdatasync covering its event; the request's thread is
    free at once. With one thread, serving a second request proves that the first one's
    answer was ready, and held."""
    proc = start_slow_disk_ingest(procs, state_dir, tmp_path, threads=1)
    with send_event(proc.port, 41) as held:
        wait_for(proc.entered.exists, what="the sync of the event's write")
        assert request(proc.port, "GET", "/stats")[0] == 200  # the one thread served another
        held.setblocking(False)
        with pytest.raises(BlockingIOError):
            held.recv(1)  # and the event's answer, ready, was not sent
        proc.gate.touch()
        held.setblocking(True)
        assert held.recv(4096).startswith(b"HTTP/1.1 202 ")
    assert (state_dir / "data1").read_bytes() == b"41 "


def test_a_stalled_disk_refuses_writes_rather_than_hold_them(procs, state_dir, tmp_path):
    """A sync that does not finish: once it has taken longer than the limit, the ingest says
    so and answers new writes 503 with Retry-After, writing nothing; the held answer still
    comes once the disk finishes, and writes are taken again."""
    proc = start_slow_disk_ingest(procs, state_dir, tmp_path, stalled_after=0.3)
    with send_event(proc.port, 43) as held:
        wait_for(proc.entered.exists, what="the sync of the event's write")
        def unhealthy():
            status, body = request(proc.port, "GET", "/healthz/ingest")
            return status == 503 and body

        health = wait_for(unhealthy, what="the stalled sync to be reported")
        assert "has not finished a sync" in health["error"]
        refused = request(proc.port, "POST", "/event", {"experienceID": 44}, with_headers=True)
        assert refused[0] == 503
        assert "has not finished a sync" in refused[1]["error"]
        assert refused[2]["Retry-After"] == "10"
        assert (state_dir / "data1").read_bytes() == b"43 "  # the refused write: nothing
        proc.gate.touch()
        assert held.recv(4096).startswith(b"HTTP/1.1 202 ")
    wait_for(lambda: post(proc.port, {"experienceID": 45})[0] == 202, what="writes again")
    assert (state_dir / "data1").read_bytes() == b"43 45 "


def test_a_stop_sends_the_answers_held_for_a_sync_once_it_is_done(procs, state_dir, tmp_path):
    """SIGTERM stops the server's loop while an answer waits for its sync: the ingest still
    makes the sync, sends the answer, and exits cleanly."""
    proc = start_slow_disk_ingest(procs, state_dir, tmp_path)
    with send_event(proc.port, 42) as held:
        wait_for(proc.entered.exists, what="the sync of the event's write")
        proc.terminate()
        wait_for(lambda: "the answers held for it (1)" in proc.log_path.read_text(),
                 what="the ingest to stop serving")
        proc.gate.touch()
        assert held.recv(4096).startswith(b"HTTP/1.1 202 ")
    assert proc.wait(timeout=15) == 0
    assert (state_dir / "data1").read_bytes() == b"42 "


def test_a_stop_signalled_as_an_answer_leaves_sends_it_once(procs, state_dir):
    """SIGTERM arriving in the server's loop just after an answer's bytes were sent, before
    the loop marked them sent: the answer still leaves once. (Acted on there, the stop left
    the bytes in the buffer and sent them again with the answers held for the last sync; the
    client took the copy for its next request's answer: acknowledged, never written.)"""
    proc = start_patched_ingest(procs, state_dir, """
        import os, signal
        from waitress.channel import HTTPChannel
        real = HTTPChannel.send
        def send(self, data, do_close=True):
            sent = real(self, data, do_close)
            if bytes(data).startswith(b"HTTP/1.1 202 "):
                os.kill(os.getpid(), signal.SIGTERM)  # before _flush_some marks them sent
            return sent
        HTTPChannel.send = send
    """)
    with send_event(proc.port, 7) as connection:
        received = b""
        while chunk := connection.recv(4096):  # until the stopped ingest closes it
            received += chunk
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert proc.wait(timeout=15) == 0
    assert (state_dir / "data1").read_bytes() == b"7 "


def test_a_failing_fsync_stops_the_process_and_recovery_is_exact(procs, state_dir):
    proc = start_patched_ingest(procs, state_dir, """
        import errno, os
        real = os.fdatasync
        calls = []
        def fdatasync(fd):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/data1"):  # not its time index
                calls.append(fd)
                if len(calls) > 2:
                    raise OSError(errno.EIO, "Input/output error")
            real(fd)
        os.fdatasync = fdatasync
    """)
    assert post(proc.port, {"experienceID": 1})[0] == 202
    assert post(proc.port, {"experienceID": 2})[0] == 202
    with pytest.raises(OSError):
        post(proc.port, {"experienceID": 3})
    assert proc.wait(timeout=10) == 70
    assert "fdatasync of data1 failed" in proc.log_path.read_text()
    _, counts = count_after_recovery(procs, state_dir)
    assert counts["1"] == 1 and counts["2"] == 1 and counts.get("3", 0) <= 1


def test_a_crash_mid_token_leaves_a_torn_tail_that_start_up_removes(procs, state_dir):
    (state_dir / "data1").write_bytes(b"1 100 1 12")  # "12..." was being written
    ingest, counts = count_after_recovery(procs, state_dir)
    assert (state_dir / "data1").read_bytes() == b"1 100 1 "
    assert "removing a torn tail of 2 bytes" in ingest.log_path.read_text()
    assert post(ingest.port, {"experienceID": 3})[0] == 202
    assert valid_counts((state_dir / "data1").read_bytes()) == {"1": 2, "100": 1, "3": 1}
    assert counts == {"1": 2, "100": 1}


def test_a_second_ingest_on_the_same_state_folder_exits(procs, state_dir):
    procs.ingest(state_dir)
    second = procs.spawn([sys.executable, "-m", "app"],
                         service_env(state_dir, port=free_port()), "second")
    assert second.wait(timeout=30) == 2  # a bad setup: supervisord leaves it stopped
    assert "another ingest is already running" in second.log_path.read_text()


def test_a_file_system_that_reports_no_size_is_not_full(app_and_log, state_dir, monkeypatch,
                                                        caplog):
    """Some FUSE file systems implement no statfs: 0 blocks, 0 free. Unknown is not full:
    writes go on, /healthz/ingest says so, and the log says so once."""
    app, log = app_and_log
    real = os.statvfs

    def sizeless(fd):
        space = real(fd)
        return os.statvfs_result((space.f_bsize, space.f_frsize, 0, 0, 0, 0, 0, 0,
                                  space.f_flag, space.f_namemax))

    monkeypatch.setattr(os, "statvfs", sizeless)
    for n in range(3):
        status, health = wsgi_post(app, "/healthz/ingest", b"", "GET")  # as admission asks
        assert status == 200 and "reports no size" in health["notes"][0]
        assert wsgi_post(app, "/event", b'{"experienceID": %d}' % n)[0] == 202
    assert (state_dir / "data1").read_bytes() == b"0 1 2 "
    assert sum("reports no size" in record.message for record in caplog.records) == 1
