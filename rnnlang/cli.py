"""`rnnc`: the command-line front end. Exit codes: 0 ok, 1 diagnostics, 2 usage, 3 bug."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from rnnlang import __version__
from rnnlang.diagnostics import InternalCompilerError, RnnUserError, Span

EMITS = ("ast", "ir", "grad-ir", "python")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"rnnc: error: {message}\n")
        raise SystemExit(2)


def _dims(items: list[str]) -> dict[str, int]:
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        if not k.isidentifier() or not v.isdigit():
            raise argparse.ArgumentTypeError(f"-D expects NAME=INT, got '{it}'")
        out[k] = int(v)
    return out


def _threads(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"--threads expects a number from 1 to 1024, got "
                                         f"'{text}'")
    return int(text)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-D", dest="dims", action="append", default=[], metavar="NAME=INT",
                   help="set a model size, e.g. -D H=128 (repeatable)")
    p.add_argument("--model", help="which model of the file (default: the first)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--target", choices=("cpu", "reference", "cuda"), default="cpu")
    p.add_argument("-O0", dest="O0", action="store_true", help="run no optimization passes")
    p.add_argument("--disable-pass", action="append", default=[], metavar="NAME")
    p.add_argument("--verify", action="store_true", help="verify the IR after every pass")
    p.add_argument("--cache-dir", type=Path, help="where generated modules are cached")
    try:
        p.add_argument("--threads", type=_threads, metavar="N",
                       help="cpu: run batch slices, or BLAS for large per-step GEMMs, on N threads "
                            "(default: every usable CPU)")
    except argparse.ArgumentError:
        pass  # the command has its own --threads (rnnc bench), which compile() receives too
    from rnnlang.parallel import MODES
    p.add_argument("--parallel", choices=MODES, default="auto",
                   help="cpu: batch slices or BLAS threads (default auto: BLAS for large "
                        "per-step GEMMs); slices degrade best when other processes hold cores")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rnnc", description="Compile recurrent networks written as equations.")
    p.add_argument("--version", action="version", version=f"rnnc (rnnlang) {__version__}")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    c = sub.add_parser("check", help="parse and type-check spec files")
    c.add_argument("files", nargs="+", type=Path)
    c = sub.add_parser("compile", help="compile a spec and print a pipeline stage")
    c.add_argument("file", type=Path)
    c.add_argument("--emit", choices=EMITS, default="python")
    c.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    c.add_argument("--dump-after", action="append", default=[], metavar="PASS|all",
                   help="print the IR after a pass (to stderr)")
    c.add_argument("--timings", action="store_true", help="report time per pass (stderr)")
    c.add_argument("--report", action="store_true",
                   help="print what the compiler did (hoisted and fused products, bytes "
                   "stored per step for BPTT, parameters, FLOPs per step) instead of --emit")
    _common(c)
    c = sub.add_parser("run", help="run a model forward and backward on random data")
    c.add_argument("file", type=Path)
    c.add_argument("--steps", type=int, default=20, help="sequence length T (default 20)")
    c.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    c.add_argument("--seed", type=int, default=0)
    _common(c)
    from rnnlang import cli_train
    cli_train.add_run_options(c)
    cli_train.add_commands(sub, _common)
    from rnnlang.cli_viz import add_commands
    add_commands(sub, _common)
    from rnnlang import cli_bench
    cli_bench.add_commands(sub, _common)
    return p


def _opts(args: argparse.Namespace) -> dict[str, object]:
    from rnnlang.passes.pipeline import forward_passes
    disabled = tuple(args.disable_pass)
    if args.O0:
        from rnnlang.passes.pipeline import BACKWARD
        disabled += tuple(n for n, _ in forward_passes() + BACKWARD)
    return dict(target=args.target, dtype=args.dtype, model=args.model,
                cache_dir=args.cache_dir, verify_ir=args.verify, disable_passes=disabled,
                threads=args.threads, parallel=args.parallel, **_dims(args.dims))


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from rnnlang.api import parse_program
    from rnnlang.lower import check_module
    errors: list[str] = []
    for f in args.files:
        if (msg := _unreadable(f)) is not None:
            errors.append(msg)
            continue
        try:
            module, base = parse_program(f)
            progs = check_module(module, base)
            names = ", ".join(p.name for p in progs) or "no models"
            n = len(module.cells)
            out.write(f"{f}: ok ({n} cell{'' if n == 1 else 's'}; {names})\n")
        except RnnUserError as exc:
            errors.append(exc.render())
    if errors:
        sys.stderr.write("\n".join(errors) + "\n")
        return 1
    return 0


def cmd_compile(args: argparse.Namespace, out: TextIO) -> int:
    import rnnlang
    from rnnlang.api import parse_program
    if args.emit == "ast":
        module, _ = parse_program(args.file)
        text = _format_ast(module)
    else:
        opts = _opts(args)
        # CUDA source is only text: print it without needing a GPU (compile it for the CPU)
        cuda_text = args.target == "cuda" and args.emit == "python" and not args.report
        if cuda_text:
            opts["target"] = "cpu"
        m = rnnlang.compile(args.file, **opts)  # type: ignore[arg-type]
        if args.dump_after:
            from rnnlang.api import CompileOptions, build_program
            from rnnlang.ir.printer import print_program
            opts = CompileOptions(disabled_passes=m.options.disabled_passes)
            _, _, log, _, _ = build_program(args.file, model=args.model, options=opts,
                                            dump=frozenset(args.dump_after))
            for name, prog in log.dumps:
                sys.stderr.write(f"--- IR after {name} ---\n{print_program(prog)}")
        if args.timings:
            for name, secs in m.pass_log.timings:
                sys.stderr.write(f"{name:28s} {secs * 1e3:8.2f} ms\n")
        if args.report:
            from rnnlang.cli_viz import report_text
            text = report_text(m)
        elif cuda_text:
            from rnnlang.executors_cuda import cuda_source
            text = cuda_source(m)
        else:
            text = m.emit(args.emit)
    if args.output:
        from rnnlang.codegen.load import atomic_write
        atomic_write(args.output, text.encode())
    else:
        out.write(text)
    return 0


def _format_ast(module: object) -> str:
    import dataclasses

    def fmt(x: object, ind: str) -> str:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            fields = [f for f in dataclasses.fields(x) if f.name not in ("span", "source",
                                                                         "func_span",
                                                                         "kind_span",
                                                                         "default_span")]
            inner = "".join(f"\n{ind}  {f.name}={fmt(getattr(x, f.name), ind + '  ')}"
                            for f in fields)
            return f"{type(x).__name__}({inner})"
        if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], Span):
            return repr(x[0])  # (name, span) pairs such as assignment targets
        if isinstance(x, tuple) and x:
            return "[" + "".join(f"\n{ind}  {fmt(y, ind + '  ')}" for y in x) + "]"
        return repr(x)

    return fmt(module, "") + "\n"


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    import rnnlang
    if getattr(args, "data", None) is not None:
        from rnnlang.cli_train import cmd_run_data
        return cmd_run_data(args, out)
    if not 1 <= args.steps <= 100_000 or not 1 <= args.batch <= 100_000:
        raise SystemExit(_usage("--steps and --batch must be between 1 and 100000"))
    t0 = time.perf_counter()
    m = rnnlang.compile(args.file, seed=args.seed, **_opts(args))  # type: ignore[arg-type]
    rng = np.random.default_rng(args.seed)
    from rnnlang.viz.gradflow import random_inputs
    inputs = random_inputs(m, args.steps, args.batch, rng)
    lengths = None
    seqs = [i.var.name for i in m.program.inputs if i.role == "seq"]
    if seqs:
        lengths = {s: rng.integers(max(1, args.steps // 2), args.steps + 1, args.batch)
                   for s in seqs}
    out.write(f"model {m.name} from {args.file}: inputs {', '.join(m.input_names)}; "
              f"outputs {', '.join(m.output_names)}\n")
    t1 = time.perf_counter()
    outs = m.forward(inputs, lengths=lengths)
    t2 = time.perf_counter()
    g = m.value_and_grad(_sum_of_squares, inputs, lengths=lengths)
    t3 = time.perf_counter()
    nparams = sum(int(v.size) for v in m.params.values())
    out.write(f"parameters: {len(m.params)} arrays, {nparams} numbers ({m.options.dtype}, "
              f"target {m.options.target})\n")
    for k, v in outs.items():
        out.write(f"output {k}: shape {v.shape}, mean {float(v.mean()):+.4f}\n")
    out.write(f"loss 0.5*sum(y^2) = {g.loss:.6g}\n")
    for k, v in sorted(g.params.items()):
        out.write(f"  grad {k:24s} norm {float(np.linalg.norm(v)):.4e}\n")
    out.write(f"compile {t1 - t0:.2f} s; first forward {t2 - t1:.2f} s; "
              f"first forward+backward {t3 - t2:.2f} s (includes JIT)\n")
    t4 = time.perf_counter()
    m.value_and_grad(_sum_of_squares, inputs, lengths=lengths)
    out.write(f"forward+backward again: {(time.perf_counter() - t4) * 1e3:.2f} ms "
              f"(T={args.steps}, B={args.batch})\n")
    return 0


def _sum_of_squares(outs: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    return sum(0.5 * float((v.astype(np.float64) ** 2).sum()) for v in outs.values()), outs


def _unreadable(path: Path | None) -> str | None:
    """A diagnostic line when a spec file cannot be opened (before any work is done)."""
    if path is None:
        return None
    try:
        if path.exists() and not path.is_dir() and not path.is_file():
            # a device or pipe could block or never end
            return f"{path}: error[E003]: cannot read this file: not a regular file"
        with open(path, "rb"):
            return None
    except OSError as exc:
        why = (exc.strerror or type(exc).__name__).lower()
        return f"{path}: error[E003]: cannot read this file: {why}"


def _usage(msg: str) -> int:
    sys.stderr.write(f"rnnc: error: {msg}\n")
    return 2


def _more_commands() -> dict[str, Callable[[argparse.Namespace, TextIO], int]]:
    from rnnlang.cli_bench import cmd_bench
    from rnnlang.cli_train import cmd_eval, cmd_train
    from rnnlang.cli_viz import cmd_gradflow, cmd_graph
    return {"graph": cmd_graph, "gradflow": cmd_gradflow, "train": cmd_train, "eval": cmd_eval,
            "bench": cmd_bench}


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "run": cmd_run, **_more_commands()}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.cmd is None:
        parser.print_help(out)
        return 2
    try:
        _dims(getattr(args, "dims", []))
    except argparse.ArgumentTypeError as exc:
        return _usage(str(exc))
    if (msg := _unreadable(getattr(args, "file", None))) is not None:
        sys.stderr.write(msg + "\n")
        return 1
    try:
        return COMMANDS[args.cmd](args, out)
    except RnnUserError as exc:
        sys.stderr.write(exc.render() + "\n")
        if args.traceback:
            traceback.print_exc()
        return 1
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        sys.stderr.write("rnnc: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report a bug, code 3
        kind = "internal compiler error" if isinstance(exc, InternalCompilerError) else (
            f"internal error ({type(exc).__name__})")
        sys.stderr.write(f"rnnc: {kind}: {exc}\nThis is a bug in rnnlang, not in your spec; "
                         "please report it with the command line and the .rnn file "
                         "(--traceback shows where it happened).\n")
        if args.traceback:
            traceback.print_exc()
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
