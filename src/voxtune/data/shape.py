"""The one check of a volume shape given on the command line or to the API (`--shape X Y Z`)."""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from voxtune.errors import VoxtuneError

MIN_SIZE = 8  # voxels per axis: what a depth-3 U-Net needs at the least


def check_shape(shape: Sequence[int] | None, flag: str = "--shape") -> tuple[int, int, int] | None:
    """(X, Y, Z) as ints, None passed through; anything else -> VoxtuneError naming the flag."""
    if shape is None:
        return None
    values = list(shape)
    if len(values) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= MIN_SIZE
                                   for v in values):
        raise VoxtuneError(f"{flag} {' '.join(map(str, values))}: need three whole sizes X Y Z, each >= {MIN_SIZE}")
    return int(values[0]), int(values[1]), int(values[2])
