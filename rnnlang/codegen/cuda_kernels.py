"""Hand-written CUDA pieces the generated CUDA modules call.

The launch configuration, and the whole-tensor kernels that are the same for every model:
matmuls (the hoisted input projections and the weight gradients after the backward scan),
zero-fill and copy. Everything model-specific (the persistent scan kernels, the fused
pointwise kernels, the device helpers of the pointwise ops) is generated.

Import this module only when the CUDA target is used: it imports ``numba.cuda``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace
from typing import Any

import numba
import numpy as np
from numba import cuda


def simulated() -> bool:
    """Whether ``numba.cuda`` is Numba's CPU simulator (one OS thread per CUDA thread)."""
    return bool(numba.config.ENABLE_CUDASIM)


@dataclass(frozen=True)
class Launch:
    """Launch shapes the generated drivers use.

    ``threads``: threads per block of the elementwise kernels and the persistent scan kernels;
    ``max_blocks``: the most blocks a scan kernel gets (each owns ``ceil(B / max_blocks)``
    batch rows, so a block per row up to the number of SMs); ``grid_cap``: the most blocks of
    an elementwise kernel (they stride over the elements); ``tile``: the matmul tile edge;
    ``small``: products with fewer output elements than this use a thread per element and no
    tiles (latency-bound anyway, and cheap to simulate).
    """

    threads: int = 256
    max_blocks: int = 132
    grid_cap: int = 4096
    tile: int = 16
    small: int = 4096

    @staticmethod
    def for_device(small: int | None = None) -> Launch:
        if simulated():  # tiny blocks: the simulator runs a thread per CUDA thread
            return Launch(threads=4, max_blocks=2, grid_cap=4, tile=4,
                          small=4096 if small is None else small)
        dev = cuda.get_current_device()
        return Launch(max_blocks=int(getattr(dev, "MULTIPROCESSOR_COUNT", 132)),
                      small=4096 if small is None else small)

    def grid(self, total: int) -> int:
        return max(1, min(self.grid_cap, -(-total // self.threads)))

    def rows(self, batch: int) -> int:
        """Batch rows per block of a persistent scan kernel."""
        return max(1, -(-batch // self.max_blocks))


@cache
def for_dtype(dtype: Any, tile: int) -> SimpleNamespace:
    """Whole-tensor kernels and their host wrappers for one dtype and tile edge."""
    nb = numba.from_dtype(np.dtype(dtype))
    dt = np.dtype(dtype)
    TILE = tile

    @cuda.jit
    def _mm(a, w, out, trans_w, m, n, k):  # out[m, n] = a[m, k] @ (w or w.T)
        sa = cuda.shared.array((TILE, TILE), nb)
        sw = cuda.shared.array((TILE, TILE), nb)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * TILE + ty
        col = cuda.blockIdx.x * TILE + tx
        acc = nb(0.0)
        for k0 in range(0, k, TILE):
            sa[ty, tx] = a[row, k0 + tx] if row < m and k0 + tx < k else 0.0
            kk = k0 + ty
            if col < n and kk < k:
                sw[ty, tx] = w[col, kk] if trans_w else w[kk, col]
            else:
                sw[ty, tx] = 0.0
            cuda.syncthreads()
            for q in range(TILE):
                acc += sa[ty, q] * sw[q, tx]
            cuda.syncthreads()
        if row < m and col < n:
            out[row, col] = acc

    @cuda.jit
    def _mm_tn(a, g, out, rows, k, n):  # out[k, n] = a[rows, k]^T @ g[rows, n]
        sa = cuda.shared.array((TILE, TILE), nb)
        sg = cuda.shared.array((TILE, TILE), nb)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * TILE + ty  # index into k
        col = cuda.blockIdx.x * TILE + tx  # index into n
        acc = nb(0.0)
        for r0 in range(0, rows, TILE):
            # sa[q, ty] = a[r0 + q, blockrow + ty] loaded as sa[tx-th row] for coalescing
            ra = r0 + tx
            ka = cuda.blockIdx.y * TILE + ty
            sa[tx, ty] = a[ra, ka] if ra < rows and ka < k else 0.0
            rg = r0 + ty
            sg[ty, tx] = g[rg, col] if rg < rows and col < n else 0.0
            cuda.syncthreads()
            for q in range(TILE):
                acc += sa[q, ty] * sg[q, tx]
            cuda.syncthreads()
        if row < k and col < n:
            out[row, col] = acc

    @cuda.jit
    def _mm_small(a, w, out, trans_w, m, n, k):  # a thread per output element, no tiles
        for e in range(cuda.grid(1), m * n, cuda.gridsize(1)):
            row = e // n
            col = e % n
            acc = nb(0.0)
            for q in range(k):
                acc += a[row, q] * (w[col, q] if trans_w else w[q, col])
            out[row, col] = acc

    @cuda.jit
    def _mm_tn_small(a, g, out, rows, k, n):
        for e in range(cuda.grid(1), k * n, cuda.gridsize(1)):
            p = e // n
            col = e % n
            acc = nb(0.0)
            for r in range(rows):
                acc += a[r, p] * g[r, col]
            out[p, col] = acc

    @cuda.jit
    def _fill0(x, total):
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            x[e] = 0.0

    @cuda.jit
    def _copy(dst, src, total):
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            dst[e] = src[e]

    def _blocks(m: int, n: int) -> tuple[tuple[int, int], tuple[int, int]]:
        return (max(1, -(-n // TILE)), max(1, -(-m // TILE))), (TILE, TILE)

    def matmul(a: Any, w: Any, trans_w: bool, launch: Launch) -> Any:
        """``a @ w`` (or ``a @ w.T``) over every leading axis of ``a`` as one GEMM."""
        shape = tuple(a.shape)  # the simulator's shapes take no negative indices
        k = shape[-1]
        n = w.shape[0] if trans_w else w.shape[1]
        lead = shape[:-1]
        m = int(np.prod(lead, dtype=np.int64))
        out = cuda.device_array(lead + (n,), dt)
        if m * n < launch.small:
            _mm_small[launch.grid(m * n), launch.threads](a.reshape(m, k), w, out.reshape(m, n),
                                                          trans_w, m, n, k)
            return out
        grid, block = _blocks(m, n)
        _mm[grid, block](a.reshape(m, k), w, out.reshape(m, n), trans_w, m, n, k)
        return out

    def matmul_tn(a: Any, g: Any, launch: Launch) -> Any:
        """``A^T @ G`` with every leading axis folded into the rows (weight gradients)."""
        sa, sg = tuple(a.shape), tuple(g.shape)
        k, n = sa[-1], sg[-1]
        rows = int(np.prod(sa[:-1], dtype=np.int64))
        out = cuda.device_array((k, n), dt)
        if k * n < launch.small:
            _mm_tn_small[launch.grid(k * n), launch.threads](a.reshape(rows, k),
                                                             g.reshape(rows, n), out, rows, k, n)
            return out
        grid, block = _blocks(k, n)
        _mm_tn[grid, block](a.reshape(rows, k), g.reshape(rows, n), out, rows, k, n)
        return out

    def zeros(shape: tuple[int, ...], launch: Launch) -> Any:
        out = cuda.device_array(shape, dt)
        total = int(np.prod(shape, dtype=np.int64))
        _fill0[launch.grid(total), launch.threads](out.reshape(total), total)
        return out

    def copy(src: Any, launch: Launch) -> Any:
        """A device-side copy (a scan array that starts from an input)."""
        shape = tuple(src.shape)
        out = cuda.device_array(shape, dt)
        total = int(np.prod(shape, dtype=np.int64))
        _copy[launch.grid(total), launch.threads](out.reshape(total), src.reshape(total), total)
        return out

    return SimpleNamespace(matmul=matmul, matmul_tn=matmul_tn, zeros=zeros, copy=copy,
                           kernels={"_mm": _mm, "_mm_tn": _mm_tn, "_mm_small": _mm_small,
                                    "_mm_tn_small": _mm_tn_small, "_fill0": _fill0,
                                    "_copy": _copy})
