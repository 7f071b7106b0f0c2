"""storage/log/format.py: data1's tokens and separators."""

import pytest

from storage.log.format import encode, last_separator, parse_token


@pytest.mark.parametrize(
    "token, expected",
    [
        (b"0", 0),
        (b"1", 1),
        (b"100", 100),
        (b"9223372036854775807", 2**63 - 1),
        (b"9223372036854775808", None),  # 2**63
        (b"99999999999999999999", None),
        (b"01", None),  # one spelling per id
        (b"00", None),
        (b"-1", None),
        (b"+1", None),
        (b"1_000", None),
        (b"1.0", None),
        (b"abc", None),
        (b"\x00\x00", None),
        (b"\xd9\xa3", None),  # a non-ASCII digit
        (b"", None),
    ],
)
def test_parse_token(token, expected):
    assert parse_token(token) == expected


def test_encode_and_last_separator():
    assert encode([1, 100, 1]) == b"1 100 1 "
    assert last_separator(b"1 2\n3") == 3
    assert last_separator(b"12") == -1
    assert last_separator(b"1\t") == 1
