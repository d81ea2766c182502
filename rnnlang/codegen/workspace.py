"""Work arrays that generated code keeps from one call to the next.

Why: a training step at (T, B, H) = (100, 64, 512) allocates about 260 MB of sequence-sized
arrays (the input projection, BPTT's stored gates, the cotangent accumulators) and drops them
at the end of the call. Fresh memory from the kernel costs a page fault per 4 KiB (per 2 MiB
with huge pages) and is zeroed by the kernel: 4,000-27,000 faults and 30-150 ms of system CPU
time per LSTM training step there, and 16 ms per medium (100, 32, 128) step. Reusing the
arrays made LSTM training steps 1.12-1.25x faster (measured 2026-11-27, one process
alternating; docs/performance.md).

Generated functions allocate every array they do not hand back to the caller through a
`Workspace` (``ws.empty(slot, shape, DTYPE)``), except a step's buffers, which the jitted time
loops allocate themselves (cheaper for small calls); outputs and gradients come from NumPy as
before, and the executor copies any that share memory with a work array (`detached`), so a
caller never sees its results change on the next call. Arrays under `MIN_BYTES` (the size below
which glibc serves allocations from its heap, without faults) are not kept.

One workspace serves all of a model's functions (per calling thread and batch slice). Slots
below `RESIDUAL_SLOTS` are scratch, dead when the function returns, so forward_train's input
projection and backward's cotangent arrays share memory (the code generator numbers scratch
slots by size, largest first). The large LSTM step's peak RSS growth is 232 MB with this, 184 MB
allocating afresh, 285 MB with a workspace per function (which holds the union of all their
temporaries). forward_train's residuals take slots from `RESIDUAL_SLOTS` on: they live until
backward has read them, and the executor copies any residual that is a view of scratch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_BYTES = 1 << 17
RESIDUAL_SLOTS = 1000  # first slot of forward_train's residuals
_ITEMSIZE = {np.float32: 4, np.float64: 8}  # generated code passes its DTYPE (a type)


class Workspace:
    """Numbered work arrays of a model's generated functions (one per calling thread and
    batch slice)."""

    __slots__ = ("bufs", "min_bytes")

    def __init__(self, min_bytes: float | None = None) -> None:
        self.bufs: dict[int, np.ndarray] = {}
        self.min_bytes = MIN_BYTES if min_bytes is None else min_bytes

    def empty(self, slot: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        n = math.prod(shape)
        buf = self.bufs.get(slot)
        if buf is None:  # the common case of small calls first: a dozen of these per call
            if n * _ITEMSIZE.get(dtype, 8) < self.min_bytes:
                return np.empty(shape, dtype)
        elif buf.size >= n and buf.dtype == dtype:
            return buf[:n].reshape(shape)
        elif n * np.dtype(dtype).itemsize < self.min_bytes:
            return np.empty(shape, dtype)
        # grow by a quarter at least, so lengths that creep up do not reallocate every call
        size = n if buf is None else max(n, buf.size + buf.size // 4)
        buf = self.bufs[slot] = np.empty(size, dtype)
        return buf[:n].reshape(shape)

    def zeros(self, slot: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        a = self.empty(slot, shape, dtype)
        a.fill(0)
        return a

    def copy(self, slot: int, src: np.ndarray) -> np.ndarray:
        a = self.empty(slot, src.shape, src.dtype)
        np.copyto(a, src)
        return a

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.bufs.values())

    def detached(self, arrays: Sequence[np.ndarray], scratch_only: bool = False
                 ) -> list[np.ndarray]:
        """``arrays`` with copies of those that share memory with a work array (with
        ``scratch_only``, with a scratch slot's)."""
        if not self.bufs:
            return list(arrays)
        bufs = [b for k, b in self.bufs.items() if not scratch_only or k < RESIDUAL_SLOTS]
        return [a.copy() if isinstance(a, np.ndarray) and any(
            np.may_share_memory(a, b) for b in bufs) else a for a in arrays]


__all__ = ["MIN_BYTES", "RESIDUAL_SLOTS", "Workspace"]
