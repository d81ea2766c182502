"""Writing a graph: Graphviz text as is, or rendered by the `dot` program.

`dot` comes from the Graphviz package (Debian/Ubuntu: ``apt-get install graphviz``). When it is
missing, the graph is written as ``.dot`` next to the requested file with a message saying how
to render it, instead of failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rnnlang.codegen.load import atomic_write
from rnnlang.diagnostics import error

TEXT_FORMATS = (".dot", ".gv")
RENDERED_FORMATS = (".svg", ".png", ".pdf")
FORMATS = TEXT_FORMATS + RENDERED_FORMATS
DOT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Written:
    path: Path
    note: str | None = None  # set when the requested format could not be produced


def write_file(path: Path, data: bytes) -> None:
    """Atomically, with the permissions a new file normally gets (umask applied)."""
    atomic_write(path, data)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def find_dot() -> str | None:
    return shutil.which("dot")


def check_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise error("E606", f"cannot write '{path}': unknown picture format '{suffix or '(none)'}'",
                    None, hint="use a file name ending in " + ", ".join(FORMATS))
    return suffix


def render_dot(dot_text: str, fmt: str, *, timeout: float = DOT_TIMEOUT_S,
               dot: str | None = None) -> bytes:
    """Run Graphviz on ``dot_text``; ``fmt`` is svg, png or pdf."""
    exe = dot or find_dot()
    if exe is None:
        raise error("E607", "Graphviz 'dot' is not installed", None,
                    hint="install it (apt-get install graphviz) or write a .dot file")
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise error("E607", f"Graphviz 'dot' did not finish within {timeout:g} s", None,
                    hint="write a .dot file and render it yourself, or draw fewer steps"
                    ) from None
    except OSError as exc:
        raise error("E607", f"cannot run Graphviz 'dot': {exc}", None) from None
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise error("E607", "Graphviz 'dot' failed: " + (msg[-1] if msg else
                                                         f"exit code {proc.returncode}"), None)
    return proc.stdout


def write_graph(dot_text: str, path: Path, *, timeout: float = DOT_TIMEOUT_S) -> Written:
    """Write ``dot_text`` to ``path`` in the format its suffix names.

    Without Graphviz, a rendered format falls back to ``path`` with suffix ``.dot``.
    """
    suffix = check_format(path)
    if suffix in TEXT_FORMATS:
        write_file(path, dot_text.encode("utf-8"))
        return Written(path)
    if find_dot() is None:
        fallback = path.with_suffix(".dot")
        write_file(fallback, dot_text.encode("utf-8"))
        return Written(fallback, f"Graphviz 'dot' was not found, so {path} was not drawn; "
                       f"wrote the graph as {fallback} instead. Install Graphviz "
                       f"(apt-get install graphviz) and run: dot -T{suffix[1:]} {fallback} "
                       f"-o {path}")
    write_file(path, render_dot(dot_text, suffix[1:], timeout=timeout))
    return Written(path)
