"""storage/log/reader.py: complete_blocks with every chunk size against the reference model,
and the fingerprint that tells whether data1 is still the file a checkpoint counted."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from reference import complete_length, valid_counts
from storage.checkpoint import Checkpoint
from storage.log.format import parse_token
from storage.log.reader import LogReader, complete_blocks
from worker.tally import Tally


def read_all(data, offset=0, chunk_size=1024 * 1024, tmp_path=None):
    path = tmp_path / "data1"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(complete_blocks(fd, offset, chunk_size))
    finally:
        os.close(fd)


def test_every_chunk_size_gives_the_same_tokens(tmp_path):
    data = b"1 100 1 22\n333\t4444 55555  0 9223372036854775807 777"
    expected_tokens = data[: complete_length(data)].split()
    for chunk_size in range(1, len(data) + 3):
        blocks = read_all(data, 0, chunk_size, tmp_path)
        tokens = [token for block, _ in blocks for token in block.split()]
        assert tokens == expected_tokens, chunk_size
        ends = [end for _, end in blocks]
        assert ends == sorted(ends) and ends[-1] == complete_length(data), chunk_size
        for block, end in blocks:
            assert block[-1:].isspace()  # every block ends on a separator


def test_partial_tail_is_never_consumed(tmp_path):
    assert read_all(b"12", tmp_path=tmp_path) == []
    assert read_all(b"1 2", tmp_path=tmp_path) == [(b"1 ", 2)]
    assert read_all(b"1 2 ", offset=2, tmp_path=tmp_path) == [(b"2 ", 4)]


def test_an_overlong_run_is_one_token_and_memory_stays_bounded(tmp_path):
    data = b"5 " + b"7" * 100_000 + b" 6 "
    blocks = read_all(data, 0, 1000, tmp_path)
    tokens = [token for block, _ in blocks for token in block.split()]
    assert len(tokens) == 3 and tokens[0] == b"5" and tokens[2] == b"6"
    assert parse_token(tokens[1]) is None  # kept only as a prefix long enough to be invalid
    assert max(len(block) for block, _ in blocks) <= 1000 + 20
    assert blocks[-1][1] == len(data)


tokens = st.one_of(
    st.integers(0, 2**63 - 1).map(lambda n: str(n).encode()),
    st.sampled_from([b"01", b"-3", b"x", b"\x00\x00", b"9" * 25, b"1.5"]),
)
separators = st.sampled_from([b" ", b"\n", b"\t", b"  ", b"\r\n"])


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.tuples(tokens, separators), max_size=40),
    tail=st.sampled_from([b"", b"12", b"\x00\x00\x00"]),
    chunk_size=st.integers(1, 64),
    data=st.data(),
)
def test_reading_from_any_complete_offset_matches_the_model(tmp_path_factory, pieces, tail, chunk_size, data):
    content = b"".join(token + sep for token, sep in pieces) + tail
    # Resume from a random point where a previous pass could have stopped.
    boundaries = [0] + [i + 1 for i, byte in enumerate(content) if chr(byte).isspace()]
    offset = data.draw(st.sampled_from(boundaries))
    blocks = read_all(content, offset, chunk_size, tmp_path_factory.mktemp("r"))
    tally = Tally()
    for block, _ in blocks:
        tally.add(block)
    counts = {}
    tally.drain_into(counts, {})
    assert {str(k): v for k, v in counts.items()} == valid_counts(content[offset:])
    end = blocks[-1][1] if blocks else offset
    assert end == max(offset, complete_length(content))


def test_mismatch_detects_truncation_and_rewrites(tmp_path):
    path = tmp_path / "data1"
    path.write_bytes(b"1 100 1 ")
    reader = LogReader(path)
    try:
        fingerprint = reader.fingerprint(8)
        assert reader.mismatch(8, fingerprint) is None
        with open(path, "r+b") as data1:
            data1.seek(6)
            data1.write(b"7 ")  # same size, different bytes before the offset
        assert "not the ones it counted" in reader.mismatch(8, fingerprint)
        os.truncate(path, 4)
        assert "shorter" in reader.mismatch(8, fingerprint)
    finally:
        reader.close()


def test_the_empty_checkpoint_matches_any_data1(tmp_path):
    path = tmp_path / "data1"
    path.write_bytes(b"5 6 7 ")
    reader = LogReader(path)
    try:
        assert reader.mismatch(0, Checkpoint().fingerprint) is None
    finally:
        reader.close()


def test_replaced_notices_a_new_file_under_the_name(tmp_path):
    path = tmp_path / "data1"
    reader = LogReader(path)  # creates it
    try:
        assert not reader.replaced()
        path.rename(tmp_path / "old")
        path.write_bytes(b"1 ")
        assert reader.replaced()
    finally:
        reader.close()
