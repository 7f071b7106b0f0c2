"""A blocked Bloom filter of 16-byte event keys (storage/backend.event_key), and the keys as
numpy columns: the "never seen" answer in memory that both dedupe stores ask before their
sorted runs on disk (storage/log/seen_index.py at the ingest, storage/views/seen_store.py at
a cluster partition).

A key sets 4 bits (from its first 4 bytes) in one 64-bit word and 4 more (from the next 4) in
another, the two words chosen by its last 8 bytes. Measured on random keys at 18 bits a key
(a filter 2/3 full): 0.06 % of new keys pass, against 0.28 % for 6 bits in one word. Bits
are only ever added: a filter never forgets a key it was given (a lookup racing an add can
miss only that key, which its caller keeps elsewhere until the add is done).
"""

import math

import numpy as np

KEY_SIZE = 16
BITS_PER_KEY = 12  # a filter's size for the keys it is made for: 0.06 to 0.5 % pass when new
_BIT = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))


def key_columns(blob):
    """The keys in `blob` (KEY_SIZE bytes each) as an (n, 2) array of u64: hi, lo."""
    return np.frombuffer(blob, dtype="<u8").reshape(-1, 2)


class Bloom:
    def __init__(self, capacity):
        """A filter made for `capacity` keys (fuller, more new keys pass)."""
        self.capacity = capacity
        self.words = np.zeros(max(1, math.ceil(capacity * BITS_PER_KEY / 64)), dtype=np.uint64)
        self.count = 0  # keys added

    def _place(self, keys):
        """Each key's two words, and the bits it sets in each."""
        size = np.uint64(len(self.words))
        first = (keys[:, 1] & np.uint64(0xFFFFFFFF)) % size
        second = (keys[:, 1] >> np.uint64(32)) % size
        bits = _BIT[keys.view(np.uint8).reshape(-1, KEY_SIZE)[:, :8] & 63]
        return ((first, np.bitwise_or.reduce(bits[:, :4], axis=1)),
                (second, np.bitwise_or.reduce(bits[:, 4:], axis=1)))

    def add(self, keys):
        """Add `keys` (key_columns)."""
        for start in range(0, len(keys), 262_144):  # bounded temporaries
            for word, mask in self._place(keys[start:start + 262_144]):
                np.bitwise_or.at(self.words, word, mask)
        self.count += len(keys)

    def may_hold(self, keys):
        """A boolean array: False for each of `keys` (key_columns) never added."""
        (first, first_mask), (second, second_mask) = self._place(keys)
        return (((self.words[first] & first_mask) == first_mask)
                & ((self.words[second] & second_mask) == second_mask))
