"""``UnicodeText``: Gymnasium's ``Text`` space over a large character set, fit for vectorised envs.

Two things of ``gymnasium.spaces.Text`` break down when the character set is most of Unicode's Basic
Multilingual Plane (55,000+ characters, as lightswe's observations and actions need):

- ``repr`` spells out the whole character set (55,000 characters in every log line and error message): here it
  names the set, ``UnicodeText(0, 18432, charset=<tab, newline and 55,xxx printable BMP characters>)``;
- ``gymnasium.vector.AsyncVectorEnv`` (and ``make_vec(..., vectorization_mode="async")``), which share
  observations through shared memory by default, returned strings of tabs for every step: it reads the shared
  buffer once, at construction, which works for ``Box`` (a NumPy view) but gives ``Text`` a tuple of the
  buffer's initial zeros (gymnasium 1.4, ``AsyncVectorEnv.__init__`` / ``_read_text_from_shared_memory``).
  Here the buffer holds, per env, the string's length and its code points (``int32[max_length + 1]``) and
  reading it gives a view (:class:`SharedTexts`) that decodes the current contents, so what a worker process
  writes is what the caller gets, with ``shared_memory=True`` (the default) or ``False``.

Everything else (sampling, ``contains``, equality, batching and iteration in vector envs) is ``Text``'s.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence

import numpy as np
from gymnasium.spaces import Text
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory
from lightswe.errors import UserInputError


class UnicodeText(Text):
    """A ``Text`` space whose ``repr`` is short and whose values survive Gymnasium's shared memory.

    ``description`` names the character set in ``repr`` (e.g. "tab, newline and printable BMP characters")."""

    def __init__(self, max_length: int, *, min_length: int = 1, charset: str | frozenset | None = None,
                 description: str = "", seed=None) -> None:
        if charset is None:
            super().__init__(max_length, min_length=min_length, seed=seed)
        else:
            super().__init__(max_length, min_length=min_length, charset=charset, seed=seed)
        self.description = description

    def __repr__(self) -> str:
        what = self.description or "characters"
        return (f"UnicodeText({self.min_length}, {self.max_length}, "
                f"charset=<{what}: {len(self.character_set):,} in all>)")


# Shared memory layout per env: [length, code point 0, ..., code point max_length-1] as int32.
@create_shared_memory.register(UnicodeText)
def _create(space: UnicodeText, n: int = 1, ctx=mp):
    return ctx.Array(np.dtype(np.int32).char, n * (space.max_length + 1))


@write_to_shared_memory.register(UnicodeText)
def _write(space: UnicodeText, index: int, value: str, shared_memory) -> None:
    size = space.max_length + 1
    if len(value) > space.max_length:
        raise UserInputError(f"a {len(value)}-character value does not fit {space!r}")
    row = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)[index * size:(index + 1) * size]
    row[0] = len(value)
    row[1:1 + len(value)] = np.frombuffer(value.encode("utf-32-le"), dtype=np.int32)


@read_from_shared_memory.register(UnicodeText)
def _read(space: UnicodeText, shared_memory, n: int = 1) -> SharedTexts:
    rows = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, space.max_length + 1))
    return SharedTexts(rows)


class SharedTexts(Sequence):
    """The ``n`` strings in a shared buffer, decoded when read: a view, as ``read_from_shared_memory`` gives for
    ``Box`` (``AsyncVectorEnv`` reads the buffer once, at construction, and relies on that). Copies
    (``copy.copy``/``deepcopy``, which ``AsyncVectorEnv(copy=True)``, the default, makes) and pickles are
    plain tuples of ``str``."""

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows  # int32[n, max_length + 1]: length, then code points

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self)[index]
        row = self._rows[index]
        return row[1:1 + int(row[0])].tobytes().decode("utf-32-le")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __copy__(self) -> tuple[str, ...]:
        return tuple(self)

    def __deepcopy__(self, memo) -> tuple[str, ...]:
        return tuple(self)

    def __reduce__(self):
        return tuple, (tuple(self),)
