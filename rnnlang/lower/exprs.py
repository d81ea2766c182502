"""Expression lowering shared by cells (one time step) and models (whole sequences).

Shapes are checked here with messages in the user's terms: batch and time axes are implicit in
the language, so a per-step value of shape (B, H) is shown as ``[H]`` and a sequence as
``seq[H]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rnnlang.diagnostics import Span, did_you_mean, error
from rnnlang.ir.nodes import Const, Operand, Var
from rnnlang.ir.ops import USER_FUNCTIONS
from rnnlang.ir.types import BATCH, Dim, broadcast
from rnnlang.lower.builder import Builder, fold, is_scalar
from rnnlang.syntax import ast
from rnnlang.syntax.parse import MAX_SIZE

Value = Operand | tuple[Operand, ...]

_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
MAX_SPLIT = 64


def rename_dim(d: Dim, names: Mapping[str, str] | None) -> Dim:
    """``d`` with its symbols renamed (when every symbol has a new name)."""
    if not names or not all(n in names for n in d.symbols):
        return d
    return Dim.linear({names[n]: v for n, v in d.terms}, d.const)


def describe(x: Operand, names: Mapping[str, str] | None = None) -> str:
    """A shape as the user wrote it: batch/time axes implicit (``names`` renames sizes)."""
    s = x.shape
    if not s:
        return "a scalar"
    dims = ", ".join(str(rename_dim(d, names)) for d in s[-1:])
    if len(s) == 3 and s[1] == BATCH:
        return f"seq[{dims}]"
    if len(s) == 2 and s[0] == BATCH:
        return f"[{dims}]"
    return "[" + ", ".join(str(rename_dim(d, names)) for d in s) + "]"


def sign(d: Dim) -> int | None:
    """+1 / 0 / -1 when ``d`` is positive / zero / negative for every size >= 1, else None."""
    coefs = [v for _, v in d.terms]
    if not coefs:
        return (d.const > 0) - (d.const < 0)
    if all(v >= 0 for v in coefs) and d.const + sum(coefs) > 0:
        return 1
    if all(v <= 0 for v in coefs) and d.const + sum(coefs) < 0:
        return -1
    return None


def features(x: Operand) -> Dim:
    return x.shape[-1] if x.shape else Dim.of(1)


class ExprLowering:
    """Lowers AST expressions through `resolve` (names) and `special` (context calls)."""

    def __init__(self, b: Builder, dims: Mapping[str, Dim], fns: Mapping[str, str]):
        self.b = b
        self.dims = dims
        self.fns = fns  # fn-parameter name -> activation

    # hooks for subclasses ----------------------------------------------------------------
    def resolve(self, name: ast.Name) -> Value:  # pragma: no cover - overridden
        raise NotImplementedError

    def index(self, e: ast.Index) -> Value:
        raise error("E301", "time indexing like s[t-1] is only allowed inside a cell", e.span)

    def special(self, e: ast.Call) -> Value | None:
        return None

    def over(self, e: ast.Over) -> Value:
        raise error("E302", "'over' applies a layer along a sequence; use it inside a model",
                    e.span)

    def known_names(self) -> list[str]:
        return []

    def size_names(self) -> Mapping[str, str] | None:
        """How sizes are shown in messages (a cell shows its own size names)."""
        return None

    def show(self, x: Operand) -> str:
        return describe(x, self.size_names())

    def show_dim(self, d: Dim) -> str:
        return str(rename_dim(d, self.size_names()))

    # dimension expressions ----------------------------------------------------------------
    def dim(self, e: ast.Expr) -> Dim:
        match e:
            case ast.Num(value=v, text=txt) if float(v).is_integer() and "." not in txt:
                if v > MAX_SIZE:
                    raise error("E306", f"size {txt} is larger than the limit of {MAX_SIZE}",
                                e.span)
                return Dim.of(int(v))
            case ast.Name(id=n) if n in self.dims:
                return self.dims[n]
            case ast.Name(id=n, span=sp):
                raise error("E304", f"unknown size '{n}'", sp,
                            hint=did_you_mean(n, self.dims) or "sizes are declared in the "
                            "model header, e.g. model m(H = 64)")
            case ast.BinOp(op="+", left=a, right=b):
                return self.dim(a) + self.dim(b)
            case ast.BinOp(op="-", left=a, right=b):
                return self.dim(a) - self.dim(b)
            case ast.BinOp(op="*", left=a, right=b):
                da, db = self.dim(a), self.dim(b)
                if da.is_const:
                    return db.scale(da.const)
                if db.is_const:
                    return da.scale(db.const)
        raise error("E305", "expected a size: an integer, a size name, or +, -, * of them",
                    e.span)

    def size(self, e: ast.Expr, what: str = "a size") -> Dim:
        """A size argument such as the H of lstm(H): must be positive."""
        d = self.dim(e)
        if sign(d) in (0, -1):
            raise error("E306", f"{what} must be positive, but this is {d}", e.span)
        return d

    def int_arg(self, e: ast.Expr, what: str, lo: int = 0, hi: int = 1 << 20) -> int:
        d = self.dim(e)
        if not d.is_const or not lo <= d.const <= hi:
            raise error("E306", f"{what} must be an integer between {lo} and {hi}", e.span)
        return d.const

    # expressions --------------------------------------------------------------------------
    def lower(self, e: ast.Expr) -> Value:
        match e:
            case ast.Num(value=v):
                return Const(v)
            case ast.Name():
                return self.resolve(e)
            case ast.Neg(operand=a, span=sp):
                x = self.single(a)
                return Const(-x.value) if isinstance(x, Const) else self.b.emit(
                    "neg", (x,), sp, "neg")
            case ast.BinOp(op="@", left=a, right=bb, span=sp):
                return self.matmul(self.single(a), self.single(bb), a, bb, sp)
            case ast.BinOp(op=op, left=a, right=bb, span=sp):
                return self.binary(_BINOPS[op], self.single(a), self.single(bb), sp)
            case ast.Index():
                return self.index(e)
            case ast.Slice():
                return self.slice(e)
            case ast.Over():
                return self.over(e)
            case ast.Call():
                return self.call(e)
        raise error("E399", "unsupported expression", getattr(e, "span", None))

    def single(self, e: ast.Expr) -> Operand:
        v = self.lower(e)
        if isinstance(v, tuple):
            raise error("E307", f"this gives {len(v)} values where one is expected", e.span,
                        hint="assign them to several names: a, b = ...")
        return v

    def binary(self, op: str, x: Operand, y: Operand, span: Span) -> Operand:
        if isinstance(x, Const) and isinstance(y, Const):
            return fold(op, x, y)
        if not (is_scalar(x) or is_scalar(y)) and broadcast(x.shape, y.shape) is None:
            raise error("E203", f"shapes do not match: {self.show(x)} {_SYM[op]} {self.show(y)}",
                        span, hint="both sides need the same size (or one side a scalar)")
        return self.b.emit(op, (x, y), span, op)

    def matmul(self, x: Operand, w: Operand, ea: ast.Expr, ew: ast.Expr, span: Span) -> Var:
        if isinstance(x, Const) or isinstance(w, Const) or len(w.shape) != 2 or len(
                x.shape) < 2 or x.shape[-2] != BATCH:
            hint = None
            if isinstance(x, Var) and isinstance(w, Var) and len(x.shape) == 2 and (
                    w.shape[-2:-1] == (BATCH,)):
                hint = "rnnlang uses row vectors: write x @ W with W of shape [in, out]"
                if x.shape[0] != BATCH and features(w) == x.shape[1]:
                    xn = ew.id if isinstance(ew, ast.Name) else "v"
                    wn = ea.id if isinstance(ea, ast.Name) else "W"
                    hint = (f"rnnlang uses row vectors: write {xn} @ {wn} with {wn} declared "
                            f"[{self.show_dim(x.shape[1])}, {self.show_dim(x.shape[0])}]")
            raise error("E204", f"cannot multiply {self.show(x)} by {self.show(w)}: '@' needs a "
                        "vector on the left and a matrix parameter on the right", span, hint=hint)
        if x.shape[-1] != w.shape[0]:
            rows, cols = self.show_dim(x.shape[-1]), self.show_dim(w.shape[1])
            wname = ew.id if isinstance(ew, ast.Name) else "W"
            raise error("E203", f"cannot multiply {self.show(x)} by {self.show(w)}: the vector "
                        f"has {rows} entries but the matrix has {self.show_dim(w.shape[0])} rows",
                        span, hint=f"the matrix needs {rows} rows to match the vector, e.g. "
                        f"param {wname}[{rows}, {cols}]")
        return self.b.emit("matmul", (x, w), span, _hint(ea, ew))

    def slice(self, e: ast.Slice) -> Var:
        x = self.single(e.base)
        n = features(x)
        start = self.dim(e.start) if e.start is not None else Dim.of(0)
        stop = self.dim(e.stop) if e.stop is not None else n
        if isinstance(x, Const):
            raise error("E205", "only a vector can be sliced", e.span)
        if sign(stop - start) in (0, -1):
            raise error("E205", f"empty slice: it starts at {self.show_dim(start)} and stops at "
                        f"{self.show_dim(stop)}", e.span)
        if sign(start) == -1 or sign(stop - n) == 1:
            raise error("E205", f"slice [{self.show_dim(start)}:{self.show_dim(stop)}] is out of "
                        f"range for {self.show(x)}", e.span,
                        hint=f"indices go from 0 to {self.show_dim(n)}")
        return self.b.emit("slice", (x,), e.span, "slice", {"start": start, "stop": stop})

    def call(self, e: ast.Call) -> Value:
        sp = self.special(e)
        if sp is not None:
            return sp
        fn = self.fns.get(e.func, e.func)
        if fn in USER_FUNCTIONS:
            if len(e.args) != 1 or e.kwargs:
                raise error("E206", f"{e.func}() takes exactly one argument", e.span)
            x = self.single(e.args[0])
            if isinstance(x, Const):
                raise error("E206", f"{e.func}() of a constant; write the number instead",
                            e.span)
            return self.b.emit(fn, (x,), e.span, fn)
        if e.func == "split":
            return self.split(e)
        if e.func == "concat":
            xs = [self.single(a) for a in e.args]
            if len(xs) < 2 or any(isinstance(x, Const) for x in xs):
                raise error("E206", "concat() takes two or more vectors", e.span)
            return self.b.emit("concat", tuple(xs), e.span, "concat")
        names = list(USER_FUNCTIONS) + list(self.fns) + ["split", "concat"] + self.known_names()
        raise error("E201", f"unknown function '{e.func}'", e.func_span,
                    hint=did_you_mean(e.func, names))

    def split(self, e: ast.Call) -> tuple[Operand, ...]:
        if len(e.args) != 2:
            raise error("E206", "split() takes a vector and a number of parts", e.span)
        x = self.single(e.args[0])
        k = self.int_arg(e.args[1], "the number of parts", 1, MAX_SPLIT)
        n = features(x)
        part = n.divide(k)
        if part is None or isinstance(x, Const):
            raise error("E207", f"cannot split {self.show(x) if isinstance(x, Var) else 'a constant'} "
                        f"into {k} equal parts", e.span,
                        hint=f"the size must be a multiple of {k}, e.g. {k}*H" if isinstance(
                            x, Var) else None)
        return tuple(self.b.emit("slice", (x,), e.span, "part",
                                 {"start": part.scale(i), "stop": part.scale(i + 1)})
                     for i in range(k))


_SYM = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _hint(a: ast.Expr, w: ast.Expr) -> str:
    an = a.id if isinstance(a, ast.Name) else "v"
    wn = w.id if isinstance(w, ast.Name) else "W"
    return f"{an}_{wn}"


CallHook = Callable[[ast.Call], Value | None]
