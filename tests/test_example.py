"""The assignment's example, step by step, against a real server and a real worker."""

from http_client import post, wait_for
from reference import read_checkpoint


def test_the_assignment_example(procs, state_dir):
    ingest = procs.ingest(state_dir)
    procs.worker(state_dir, interval=0.2)

    for experience_id in (1, 100, 1):
        assert post(ingest.port, {"experienceID": experience_id}, path="/ingest-api")[0] == 202
    assert (state_dir / "data1").read_bytes() == b"1 100 1 "

    first = wait_for(lambda: read_checkpoint(state_dir), what="the first checkpoint")
    assert first["counts"] == {"1": 2, "100": 1}
    assert first["offset"] == 8

    assert post(ingest.port, {"experienceID": 1})[0] == 202
    assert (state_dir / "data1").read_bytes() == b"1 100 1 1 "
    second = wait_for(
        lambda: (cp := read_checkpoint(state_dir))["offset"] == 10 and cp, what="the next pass"
    )
    assert second["counts"] == {"1": 3, "100": 1}
    assert second["events"] == 4
