"""Symbolic dimensions and tensor types.

A `Dim` is a linear form over named sizes (``4*H``, ``H + I``) so shape checks work before any
size is known; `evaluate` turns it into an int once sizes are bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Dim:
    terms: tuple[tuple[str, int], ...] = ()
    const: int = 0

    @staticmethod
    def of(x: int | str | Dim) -> Dim:
        if isinstance(x, Dim):
            return x
        if isinstance(x, int):
            return Dim((), x)
        return Dim(((x, 1),), 0)

    @staticmethod
    def linear(terms: Mapping[str, int], const: int = 0) -> Dim:
        return Dim(tuple(sorted((k, v) for k, v in terms.items() if v)), const)

    def __add__(self, other: Dim | int) -> Dim:
        o = Dim.of(other)
        t = dict(self.terms)
        for k, v in o.terms:
            t[k] = t.get(k, 0) + v
        return Dim.linear(t, self.const + o.const)

    def __sub__(self, other: Dim | int) -> Dim:
        return self + Dim.of(other).scale(-1)

    def scale(self, k: int) -> Dim:
        return Dim.linear({n: v * k for n, v in self.terms}, self.const * k)

    def divide(self, k: int) -> Dim | None:
        """Exact division by an int, or None when some coefficient is not divisible."""
        if k == 0 or self.const % k or any(v % k for _, v in self.terms):
            return None
        return Dim.linear({n: v // k for n, v in self.terms}, self.const // k)

    @property
    def is_const(self) -> bool:
        return not self.terms

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.terms)

    def evaluate(self, env: Mapping[str, int]) -> int:
        return self.const + sum(v * env[n] for n, v in self.terms)

    def __str__(self) -> str:
        out = ""
        for n, v in self.terms:
            term = n if abs(v) == 1 else f"{abs(v)}*{n}"
            out += (("-" if v < 0 else "") + term) if not out else (
                (" - " if v < 0 else " + ") + term)
        if self.const or not out:
            c = self.const
            out += str(c) if not out else (f" - {-c}" if c < 0 else f" + {c}")
        return out


ONE = Dim((), 1)
BATCH = Dim.of("B")


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "float"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return "(" + ", ".join(str(d) for d in self.shape) + ")"


def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """NumPy broadcasting over symbolic dims; None when the shapes do not broadcast."""
    n = max(len(a), len(b))
    pa = (ONE,) * (n - len(a)) + a
    pb = (ONE,) * (n - len(b)) + b
    out = []
    for x, y in zip(pa, pb, strict=True):
        if x == y or y == ONE:
            out.append(x)
        elif x == ONE:
            out.append(y)
        else:
            return None
    return tuple(out)
