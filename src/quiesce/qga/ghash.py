"""The order in which qemu-ga finds a request's unexpected arguments: GLib's hash table, replayed.

When a command's arguments hold more than one member it does not take,
qemu-ga names only the first it finds ("Parameter 'b' is unexpected"). QAPI's
input visitor keeps the members not yet taken in a ``GHashTable`` (string
keys, ``g_str_hash``): it adds every member in the ``QDict``'s order (see
:func:`quiesce.qga.qjson.qdict_order`), removes each one the command takes,
and reports the first one left in the table's slot order. That order is
GLib's (2.74, Debian 12's): open addressing with quadratic probing, a prime
modulus per power-of-two size, tombstones, and a resize that moves entries
in place. This module plays those steps on a model of the table; it never
looks at how Python orders anything.
"""

from __future__ import annotations

from collections.abc import Iterable

#: GLib's smallest table: 1 << 3 slots.
_MIN_SHIFT = 3
#: GLib's modulus for each power-of-two size (``prime_mod`` in ghash.c).
_PRIME_MOD = (
    1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
    262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689,
    268435399, 536870909, 1073741789, 2147483647,
)  # fmt: skip
_UNUSED, _TOMBSTONE = 0, 1
_MASK32 = 0xFFFFFFFF


def c_bytes(key: str) -> bytes:
    """A member name as qemu holds it: modified UTF-8 (U+0000 is C0 80, so the C string goes on)."""
    return key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")


def str_hash(key: str) -> int:
    """GLib's ``g_str_hash`` (djb2 over *signed* chars) of the member name, as a 32-bit value."""
    h = 5381
    for byte in c_bytes(key):
        h = (h * 33 + (byte - 256 if byte >= 0x80 else byte)) & _MASK32
    return h


class _Table:
    """A ``GHashTable`` used as a set of strings: only what decides the slot order."""

    def __init__(self) -> None:
        self._set_shift(_MIN_SHIFT)
        self.hashes = [_UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, hash_value: int) -> int:
        return ((hash_value * 11) & _MASK32) % self.mod

    def _lookup(self, key: str) -> tuple[int, int]:
        """(slot, hash): the key's slot, else the first tombstone passed, else the unused slot."""
        hash_value = str_hash(key)
        if hash_value < 2:  # 0 and 1 mark unused slots and tombstones
            hash_value = 2
        i = self._index(hash_value)
        step = 0
        tombstone = None
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == hash_value and self.keys[i] == key:
                return i, hash_value
            if self.hashes[i] == _TOMBSTONE and tombstone is None:
                tombstone = i
            step += 1
            i = (i + step) & self.mask
        return (i if tombstone is None else tombstone), hash_value

    def add(self, key: str) -> None:
        """``g_hash_table_insert``: a new key takes its slot (growing the table when nearly full)."""
        i, hash_value = self._lookup(key)
        if self.hashes[i] >= 2:
            return  # already there: it keeps its slot
        was_unused = self.hashes[i] == _UNUSED
        self.hashes[i], self.keys[i] = hash_value, key
        self.nnodes += 1
        if was_unused:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        """``g_hash_table_remove``: the slot becomes a tombstone (shrinking the table when sparse)."""
        i, _ = self._lookup(key)
        if self.hashes[i] < 2:
            return
        self.hashes[i], self.keys[i] = _TOMBSTONE, None
        self.nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        size, occupied = self.size, self.noccupied
        if (size > self.nnodes * 4 and size > 1 << _MIN_SHIFT) or size <= occupied + occupied // 16:
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        wanted = int(self.nnodes * 1.333)
        shift = 0
        while wanted:
            wanted >>= 1
            shift += 1
        self._set_shift(max(shift, _MIN_SHIFT))
        if self.size > old_size:
            self.hashes += [_UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        placed = [False] * max(self.size, old_size)
        # GLib moves the entries in place: each one goes to the first slot not yet given out
        # in this resize, and the entry it evicts from there moves next.
        for i in range(old_size):
            hash_value = self.hashes[i]
            if hash_value < 2:
                self.hashes[i] = _UNUSED
                continue
            if placed[i]:
                continue
            self.hashes[i] = _UNUSED
            key, self.keys[i] = self.keys[i], None
            while True:
                j = self._index(hash_value)
                step = 0
                while placed[j]:
                    step += 1
                    j = (j + step) & self.mask
                placed[j] = True
                evicted_hash, evicted_key = self.hashes[j], self.keys[j]
                self.hashes[j], self.keys[j] = hash_value, key
                if evicted_hash < 2:
                    break
                hash_value, key = evicted_hash, evicted_key
        del self.hashes[self.size :], self.keys[self.size :]
        self.noccupied = self.nnodes

    def first(self) -> str | None:
        """The key ``g_hash_table_iter_next`` gives first (lowest slot), or None when empty."""
        for hash_value, key in zip(self.hashes, self.keys, strict=True):
            if hash_value >= 2:
                return key
        return None


def first_left(members: Iterable[str], taken: Iterable[str]) -> str | None:
    """The member qemu-ga names as unexpected: ``members`` added in order, ``taken`` removed in order."""
    table = _Table()
    for key in members:
        table.add(key)
    for key in taken:
        table.remove(key)
    return table.first()
