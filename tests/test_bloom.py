"""The "never seen" answer both dedupe stores ask first (storage/bloom.py): a key it was given
is never answered "never seen" (else a repeat would be counted again), and new keys pass no
more often than its size promises."""

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.bloom import BITS_PER_KEY, KEY_SIZE, Bloom, key_columns


def reference_may_hold(bloom, key):
    """The documented rule, bit by bit: 4 bits from the key's first 4 bytes in one 64-bit
    word, 4 from the next 4 in another, the words chosen by its last 8 bytes."""
    words = [int(word) for word in bloom.words]
    last = int.from_bytes(key[8:], "little")
    for word, part in ((last & 0xFFFFFFFF, key[:4]), (last >> 32, key[4:8])):
        mask = 0
        for byte in part:
            mask |= 1 << (byte & 63)
        if words[word % len(words)] & mask != mask:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(added=st.lists(st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE), max_size=60),
       asked=st.lists(st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE), max_size=60),
       capacity=st.integers(1, 200))
def test_a_key_given_is_never_answered_never_seen_and_answers_follow_the_rule(added, asked,
                                                                              capacity):
    bloom = Bloom(capacity)
    if added:
        bloom.add(key_columns(b"".join(added)))
        assert bloom.may_hold(key_columns(b"".join(added))).all()
    if asked:
        answers = bloom.may_hold(key_columns(b"".join(asked))).tolist()
        assert answers == [reference_may_hold(bloom, key) for key in asked]


def test_new_keys_pass_rarely_at_the_capacity_it_was_made_for():
    bloom = Bloom(200_000)
    rng = random.Random(7)
    bloom.add(key_columns(rng.randbytes(KEY_SIZE * 200_000)))
    passed = bloom.may_hold(key_columns(os.urandom(KEY_SIZE * 200_000))).mean()
    # BITS_PER_KEY (12) at capacity: about 0.5 % pass (storage/bloom.py); far more would
    # send most lookups to the runs on disk.
    assert BITS_PER_KEY == 12 and passed < 0.01, passed
