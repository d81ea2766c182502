"""Checking ``train [MODEL] { ... }`` sections: training settings written next to the model.

`train_section(module, model_name, base)` checks the section of one model and returns its
settings as a dict whose keys are `rnnlang.train.loop.TrainConfig` fields plus ``losses``
(list of `LossSpec`), ``targets`` (output -> data array), ``data`` / ``val_data`` /
``test_data`` (paths, relative to the spec's folder), ``window`` and ``baseline``; only the
settings written appear.
`check_trains(module)` checks every section of a file (run by ``rnnc check`` and compile).
Mistakes are located `RnnUserError`s (E806) with did-you-mean hints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnlang.diagnostics import Collector, RnnUserError, Span, did_you_mean, error
from rnnlang.syntax import ast

CODE = "E806"
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "nesterov", "weight_decay"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay"),
}
SCHEDULES: dict[str, tuple[str, ...]] = {
    "constant": ("warmup",),
    "step": ("step_size", "gamma", "warmup"),
    "cosine": ("min_lr", "warmup"),
}
LOSS_KINDS = ("mse", "xent", "bce")
REDUCTIONS = ("step", "last")
BASELINES = ("last", "none")
NONFINITE = ("stop", "skip")


def _bad(msg: str, span: Span | None, hint: str | None = None) -> RnnUserError:
    return error(CODE, msg, span, hint=hint)


def _suggest(got: str, options: Any, what: str = "one of") -> str:
    listed = f"{what} " + ", ".join(options)
    close = did_you_mean(got, options)
    return f"{close} ({listed})" if close else listed


def _number(e: ast.Expr | ast.Str, what: str) -> float:
    sign = 1.0
    while isinstance(e, ast.Neg):
        sign, e = -sign, e.operand
    if not isinstance(e, ast.Num):
        raise _bad(f"{what} must be a number", e.span)
    return sign * e.value


def _int(e: ast.Expr | ast.Str, what: str, lo: int, hi: int = 10**9) -> int:
    v = _number(e, what)
    if v != int(v) or (isinstance(e, ast.Num) and ("." in e.text or "e" in e.text.lower())):
        raise _bad(f"{what} must be a whole number, got {_text(e)}", e.span)
    if not lo <= v <= hi:
        raise _bad(f"{what} must be between {lo} and {hi}, got {int(v)}", e.span)
    return int(v)


def _float(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False,
           ) -> Callable[[ast.Expr | ast.Str, str], float]:
    def conv(e: ast.Expr | ast.Str, what: str) -> float:
        v = _number(e, what)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not (math.isfinite(v) and ok):
            lb = "(" if lo_open else "["
            rb = ")" if hi_open else "]"
            rng = f"> {lo:g}" if hi == math.inf else f"in {lb}{lo:g}, {hi:g}{rb}"
            raise _bad(f"{what} must be {rng}, got {v:g}", e.span)
        return v
    return conv


def _ints(lo: int, hi: int = 10**9) -> Callable[[ast.Expr | ast.Str, str], int]:
    return lambda e, what: _int(e, what, lo, hi)


def _choice(options: tuple[str, ...]) -> Callable[[ast.Expr | ast.Str, str], str]:
    def conv(e: ast.Expr | ast.Str, what: str) -> str:
        if not isinstance(e, ast.Name) or e.id not in options:
            got = e.id if isinstance(e, ast.Name) else _text(e)
            raise _bad(f"unknown {what} '{got}'", e.span,
                       hint=_suggest(got, options))
        return e.id
    return conv


def _bool(e: ast.Expr | ast.Str, what: str) -> bool:
    return _choice(("true", "false"))(e, what) == "true"


def _text(e: ast.Expr | ast.Str) -> str:
    src = e.span.source
    if e.span.line == e.span.end_line:
        return src.line(e.span.line)[e.span.col - 1: e.span.end_col - 1]
    return type(e).__name__.lower()


OPTION_TYPES: dict[str, Callable[[ast.Expr | ast.Str, str], Any]] = {
    "lr": _float(0.0, lo_open=True), "momentum": _float(0.0, 1.0, hi_open=True),
    "nesterov": _bool, "weight_decay": _float(0.0), "beta1": _float(0.0, 1.0, hi_open=True),
    "beta2": _float(0.0, 1.0, hi_open=True), "eps": _float(0.0, lo_open=True),
    "alpha": _float(0.0, 1.0, hi_open=True), "step_size": _ints(1), "gamma": _float(0.0),
    "warmup": _ints(0), "min_lr": _float(0.0),
}
# plain settings: key -> (TrainConfig field or result key, converter)
SETTINGS: dict[str, tuple[str, Callable[[ast.Expr | ast.Str, str], Any]]] = {
    "epochs": ("epochs", _ints(1, 10_000_000)),
    "batch_size": ("batch_size", _ints(1, 1_000_000)),
    "lr": ("lr", OPTION_TYPES["lr"]),
    "warmup": ("warmup", OPTION_TYPES["warmup"]),
    "min_lr": ("min_lr", OPTION_TYPES["min_lr"]),
    "step_size": ("step_size", OPTION_TYPES["step_size"]),
    "gamma": ("gamma", OPTION_TYPES["gamma"]),
    "clip_norm": ("clip_norm", _float(0.0, lo_open=True)),
    "clip_value": ("clip_value", _float(0.0, lo_open=True)),
    "val_split": ("val_fraction", _float(0.0, 1.0, hi_open=True)),
    "patience": ("patience", _ints(1)),
    "seed": ("seed", _ints(0, 2**63 - 1)),
    "max_steps": ("max_steps", _ints(1)),
    "tbptt": ("tbptt", _ints(1)),
    "tbptt_k2": ("tbptt_k2", _ints(1)),
    "on_nonfinite": ("on_nonfinite", _choice(NONFINITE)),
    "window": ("window", _ints(1)),
    "baseline": ("baseline", _choice(BASELINES)),
}
PATHS = ("data", "val_data", "test_data")
KEYS = tuple(sorted([*SETTINGS, "optimizer", "schedule", "loss", "target", *PATHS]))
KEYED = ("loss", "target")  # keys followed by an output name


def _call_parts(e: ast.Expr | ast.Str, what: str, table: dict[str, tuple[str, ...]],
                ) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name(k = v, ...)`` with keywords allowed by ``table[name]``."""
    if isinstance(e, ast.Call):
        name, span, args, kwargs = e.func, e.func_span, e.args, e.kwargs
    else:
        name, span, args, kwargs = (e.id if isinstance(e, ast.Name) else ""), e.span, (), ()
    if name not in table:
        got = name or _text(e)
        raise _bad(f"unknown {what} '{got}'", span,
                   hint=_suggest(got, table))
    if args:
        raise _bad(f"{what} options are given by name, e.g. {name}(lr = 0.01)", args[0].span)
    opts: dict[str, Any] = {}
    for k, v in kwargs:
        if k not in table[name]:
            raise _bad(f"{name} has no option '{k}'", v.span,
                       hint=_suggest(k, table[name], "options:"))
        if k in opts:
            raise _bad(f"option '{k}' is given twice", v.span)
        opts[k] = OPTION_TYPES[k](v, k)
    return name, opts


def _outputs(model: ast.ModelDef) -> list[str]:
    return [s.name for s in model.body if isinstance(s, ast.OutputDecl)]


def _find(module: ast.Module, name: str | None, span: Span | None) -> ast.ModelDef:
    if name is None:
        if not module.models:
            raise _bad("a train section needs a model in the same file", span)
        return module.models[0]
    for m in module.models:
        if m.name == name:
            return m
    names = [m.name for m in module.models]
    raise _bad(f"train section for '{name}', which is not a model of this file", span,
               hint=did_you_mean(name, names) or ("its models are " + ", ".join(names)
                                                  if names else "define the model first"))


def _check_one(module: ast.Module, sec: ast.TrainDef, base: Path | None) -> dict[str, Any]:
    from rnnlang.train.losses import LossSpec

    model = _find(module, sec.model, sec.model_span or sec.span)
    outs = _outputs(model)
    res: dict[str, Any] = {}
    seen: dict[tuple[str, str | None], ast.TrainSet] = {}
    losses: list[LossSpec] = []
    targets: dict[str, str] = {}
    sched_opts: dict[str, Any] = {}
    for st in sec.body:
        if st.key not in KEYS:
            raise _bad(f"unknown training setting '{st.key}'", st.key_span,
                       hint=did_you_mean(st.key, KEYS) or "settings: " + ", ".join(KEYS))
        if (st.key in KEYED) != (st.sub is not None):
            if st.sub is None:
                raise _bad(f"'{st.key}' needs the output it applies to, e.g. "
                           f"{st.key} {outs[0] if outs else 'y'} = ...", st.key_span)
            raise _bad(f"unexpected '{st.sub}' after '{st.key}'", st.sub_span,
                       hint=f"write {st.key} = VALUE")
        if st.key != "loss" and st.suffix is not None:
            raise _bad(f"':' only follows a loss (loss y = mse : last), not '{st.key}'",
                       st.suffix_span)
        prev = seen.get((st.key, st.sub))
        if prev is not None:
            what = f"{st.key} {st.sub}" if st.sub else st.key
            raise _bad(f"'{what}' is set twice in this train section", st.key_span,
                       hint=f"the first is on line {prev.span.line}")
        seen[(st.key, st.sub)] = st
        if st.sub is not None and st.sub not in outs:
            raise _bad(f"'{st.sub}' is not an output of model '{model.name}'", st.sub_span,
                       hint=did_you_mean(st.sub, outs) or "its outputs are " + ", ".join(outs))
        v = st.value
        if st.key in PATHS:
            if not isinstance(v, ast.Str):
                raise _bad(f"{st.key} must be a file path in quotes, e.g. "
                           f"{st.key} = \"data/train.npz\"", v.span)
            p = Path(v.value)
            res[st.key] = p if p.is_absolute() or base is None else base / p
        elif isinstance(v, ast.Str):
            raise _bad(f"{st.key} takes no string", v.span,
                       hint="strings are only for the paths " + ", ".join(PATHS))
        elif st.key == "loss":
            assert st.sub is not None
            weight = st.weight
            if isinstance(v, ast.BinOp) and v.op == "*" and st.suffix is None:
                weight = _float(0.0)(v.right, "a loss weight")
                v = v.left
            kind = _choice(LOSS_KINDS)(v, "loss")
            red = "step"
            if st.suffix is not None:
                if st.suffix not in REDUCTIONS:
                    raise _bad(f"unknown reduction '{st.suffix}'", st.suffix_span,
                               hint=_suggest(st.suffix, REDUCTIONS))
                red = st.suffix
            if weight is not None and not (math.isfinite(weight) and weight >= 0):
                raise _bad(f"a loss weight must be >= 0, got {weight:g}", st.span)
            losses.append(LossSpec(st.sub, kind, red, None, 1.0 if weight is None else weight))
        elif st.key == "target":
            assert st.sub is not None
            if not isinstance(v, ast.Name):
                raise _bad("target names the data array holding the output's targets, e.g. "
                           f"target {st.sub} = labels", v.span)
            targets[st.sub] = v.id
        elif st.key == "optimizer":
            name, opts = _call_parts(v, "optimizer", OPTIMIZERS)
            res["optimizer"] = name
            if "lr" in opts:
                if ("lr", None) in seen:
                    raise _bad("the learning rate is set twice (lr and optimizer(lr = ...))",
                               v.span)
                res["lr"] = opts.pop("lr")
            res["optimizer_options"] = opts
        elif st.key == "schedule":
            name, opts = _call_parts(v, "schedule", SCHEDULES)
            res["schedule"] = name
            sched_opts = opts
        else:
            field, conv = SETTINGS[st.key]
            if st.key == "lr" and "lr" in res:
                raise _bad("the learning rate is set twice (lr and optimizer(lr = ...))",
                           st.key_span)
            res[field] = conv(v, st.key)
    for k, val in sched_opts.items():
        if k in res:
            raise _bad(f"'{k}' is set twice (as a setting and as a schedule option)",
                       seen[("schedule", None)].value.span)
        res[k] = val
    if losses:
        res["losses"] = [LossSpec(s.output, s.kind, s.reduction, targets.get(s.output),
                                  s.weight) for s in losses]
    if targets:
        res["targets"] = targets
    if "patience" in res and not res.get("val_fraction") and "val_data" not in res:
        raise _bad("patience needs validation data (val_split or val_data)",
                   seen[("patience", None)].key_span)
    if "tbptt_k2" in res and "tbptt" not in res:
        raise _bad("tbptt_k2 needs tbptt (the number of steps between updates)",
                   seen[("tbptt_k2", None)].key_span)
    return res


def _sections_by_model(module: ast.Module) -> dict[str, ast.TrainDef]:
    out: dict[str, ast.TrainDef] = {}
    for sec in module.trains:
        model = _find(module, sec.model, sec.model_span or sec.span)
        if model.name in out:
            raise _bad(f"model '{model.name}' has two train sections", sec.model_span or sec.span,
                       hint=f"the first is on line {out[model.name].span.line}")
        out[model.name] = sec
    return out


def check_trains(module: ast.Module, base: Path | None = None) -> None:
    """Check every train section of ``module`` (errors collected, then raised)."""
    coll = Collector()
    try:
        sections = _sections_by_model(module)
    except RnnUserError as exc:
        coll.add(exc)
        sections = {}
    for sec in sections.values():
        try:
            _check_one(module, sec, base)
        except RnnUserError as exc:
            coll.add(exc)
    coll.raise_if_any()


def train_section(module: ast.Module, model_name: str | None = None,
                  base: Path | None = None) -> dict[str, Any]:
    """The checked settings of ``model_name``'s train section ({} when it has none).
    ``model_name`` None means the file's first model; ``base`` resolves data paths."""
    if not module.models:
        return {}
    name = model_name or module.models[0].name
    sec = _sections_by_model(module).get(name)
    return {} if sec is None else _check_one(module, sec, base)
