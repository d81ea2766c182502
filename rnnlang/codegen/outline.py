"""Moving a time loop into a function of its own, shared by every identical loop.

The layers of a stack run the same loop on different arrays (after hoisting, layer 0's loop
reads the projected input just like layer 1's). Numba compiles each function it is given, so
a loop written out once per layer costs its compile time once per layer; outlined and shared,
the second layer's loop is free. Loops are identical when their code is the same up to the
names of their variables (comments, which echo each layer's source line, do not count).

The emitted loop is parsed back with `ast`: its free names become the outlined function's
parameters, in order of first use, so two identical loops take corresponding arguments in the
same order.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field

from rnnlang.codegen.writer import CodeWriter


@dataclass
class Outlined:
    """Outlined loops of one module: canonical code -> (function name, source lines)."""

    jit: str
    functions: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def emit(self, w: CodeWriter) -> None:
        for _key, (_name, lines) in self.functions.items():
            w.line()
            w.line()
            w.lines.extend(lines)


# what generated code refers to at module level: its imports and the builtins it uses (all
# in codegen.cpu.RESERVED, so no name derived from a user identifier can shadow them)
_MODULE = frozenset({"np", "math", "kernels", "njit", "DTYPE", "range", "min", "max", "abs",
                     "len", "float", "int", "tuple", "print"})


def _global(name: str) -> bool:
    """Module-level names of generated code: imports, DTYPE, typed constants (K_...) and
    helpers (_...); names derived from user identifiers never look like these."""
    return name in _MODULE or name.startswith(("_", "K_"))


def _names_in_order(tree: ast.AST) -> list[ast.Name]:
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name)]
    return sorted(names, key=lambda n: (n.lineno, n.col_offset))


def _loads(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}


def _read_first(body: list[ast.stmt], stored: set[str], defined: set[str]) -> bool:
    """Whether, in execution order, some name the loop assigns is read before that (values
    before targets; a branch's assignments count as made)."""
    for st in body:
        match st:
            case ast.Assign(targets=targets, value=value):
                if (_loads(value) | set().union(*map(_loads, targets))) & stored - defined:
                    return True
                defined |= {n.id for t in targets for n in ast.walk(t)
                            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            case ast.For(target=target, iter=it, body=inner, orelse=[]):
                if _loads(it) & stored - defined:
                    return True
                defined |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
                if _read_first(inner, stored, defined):
                    return True
            case ast.If(test=test, body=yes, orelse=no):
                if _loads(test) & stored - defined or _read_first(yes, stored, defined) \
                        or _read_first(no, stored, defined):
                    return True
            case ast.AugAssign(target=ast.Subscript() as target, value=value):
                if (_loads(value) | _loads(target)) & stored - defined:
                    return True
            case ast.Expr(value=value):
                if _loads(value) & stored - defined:
                    return True
            case _:
                return True  # anything else: do not outline
    return False


def outline_loop(w: CodeWriter, start: int, title: str, out: Outlined) -> bool:
    """Replace ``w.lines[start:]`` (one ``for`` statement at the writer's current depth, after
    the assignments that allocate its per-step buffers) by a call of an outlined function;
    False (and nothing changed) where that is not safe."""
    text = textwrap.dedent("\n".join(w.lines[start:]))
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    if not tree.body or not isinstance(tree.body[-1], ast.For) or not all(
            isinstance(st, ast.Assign) for st in tree.body[:-1]):
        return False
    names = _names_in_order(tree)
    stored = {n.id for n in names if isinstance(n.ctx, ast.Store)}
    if any(isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)
           for n in ast.walk(tree)):
        return False  # a name updated in place would need its value from outside
    if _read_first(tree.body, stored, set()):
        return False  # read before it is assigned: it would need its value from outside
    params: list[str] = []
    for n in names:
        if n.id not in stored and not _global(n.id) and n.id not in params:
            params.append(n.id)
    canon: dict[str, str] = {}
    for n in names:
        if not _global(n.id) and n.id not in canon:
            canon[n.id] = f"_v{len(canon)}"
    renamed = ast.parse(text)
    for n in ast.walk(renamed):
        if isinstance(n, ast.Name) and n.id in canon:
            n.id = canon[n.id]
    key = ast.unparse(renamed)
    if key not in out.functions:
        name = f"_loop_{len(out.functions)}"
        fn = CodeWriter()
        fn.line(out.jit)
        with fn.block(f"def {name}({', '.join(params)}):"):
            fn.comment(title)
            fn.lines.extend("    " + line if line else "" for line in text.splitlines())
        out.functions[key] = (name, fn.lines)
    del w.lines[start:]
    w.line(f"{out.functions[key][0]}({', '.join(params)})")
    return True
