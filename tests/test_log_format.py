"""storage/log/format.py: data1's tokens and separators."""

import pytest

from storage.log.format import MAX_TOKEN_LEN, encode, last_separator, parse_key, parse_token


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


@pytest.mark.parametrize("token, expected", [
    (b"7", ("", 7)), (b"shop:7", ("shop", 7)), (b"a-b_2:0", ("a-b_2", 0)),
    (b"shop:9223372036854775807", ("shop", 2**63 - 1)),
    (b"Shop:7", None), (b"shop:07", None), (b":7", None), (b"shop:", None), (b"shop:x", None),
    (b"a:b:7", None), (b"-a:7", None), (b"a" * 41 + b":7", None),
    (b"shop:9223372036854775808", None),
])
def test_parse_key(token, expected):
    assert parse_key(token) == expected


def test_a_project_s_records_name_it_and_fit_the_longest_token():
    assert encode([7, 1], "shop") == b"shop:7 shop:1 "
    assert encode([7, 1]) == b"7 1 "  # the default project's: the assignment's bytes
    longest = encode([2**63 - 1], "a" * 40)[:-1]
    assert len(longest) == MAX_TOKEN_LEN and parse_key(longest) == ("a" * 40, 2**63 - 1)
