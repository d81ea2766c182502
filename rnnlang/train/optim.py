"""Optimizers over a parameter dict, gradient clipping and learning-rate schedules.

Optimizers update parameters in place with NumPy (whole-array operations, deterministic).
Their state (moments, step count) is a flat dict of arrays plus JSON-able hyperparameters,
saved in training checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rnnlang.diagnostics import error

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")


class Optimizer:
    """Base: ``step(params, grads, lr)`` updates ``params`` in place."""

    name = "base"
    slots: tuple[str, ...] = ()

    def __init__(self, **hyper: Any) -> None:
        self.hyper = hyper
        self.t = 0
        self.state: dict[str, np.ndarray] = {}

    def _slot(self, slot: str, name: str, like: np.ndarray) -> np.ndarray:
        key = f"{slot}/{name}"
        arr = self.state.get(key)
        if arr is None:
            arr = self.state[key] = np.zeros_like(like)
        return arr

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray],
             lr: float) -> None:
        self.t += 1
        for name in sorted(params):
            g = grads.get(name)
            if g is None:
                continue
            p = params[name]
            self._update(name, p, np.asarray(g, dtype=p.dtype), p.dtype.type(lr))

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: Any) -> None:
        raise NotImplementedError

    # checkpointing ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "hyper": self.hyper, "t": self.t}

    def load_state(self, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   params: Mapping[str, np.ndarray]) -> None:
        if config.get("name") != self.name:
            raise error("E804", f"the checkpoint's optimizer is {config.get('name')}, not "
                        f"{self.name}", None, hint="resume with the same --optimizer")
        self.t = int(config.get("t", 0))
        state: dict[str, np.ndarray] = {}
        for key, arr in arrays.items():
            slot, _, pname = key.partition("/")
            if slot not in self.slots or pname not in params:
                raise error("E804", f"the checkpoint's optimizer state has an unknown entry "
                            f"'{key}'", None)
            if arr.shape != params[pname].shape:
                raise error("E804", f"optimizer state '{key}' has shape {arr.shape}, the "
                            f"parameter has {params[pname].shape}", None)
            state[key] = np.array(arr, dtype=params[pname].dtype)
        self.state = state


class SGD(Optimizer):
    name = "sgd"
    slots = ("v",)

    def __init__(self, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        if nesterov and momentum <= 0:
            raise error("E805", "Nesterov momentum needs --momentum > 0", None)
        super().__init__(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: Any) -> None:
        h = self.hyper
        dt = p.dtype.type
        if h["weight_decay"]:
            g = g + dt(h["weight_decay"]) * p
        mu = dt(h["momentum"])
        if h["momentum"]:
            v = self._slot("v", name, p)
            v *= mu
            v += g
            g = g + mu * v if h["nesterov"] else v
        p -= lr * g


class Adam(Optimizer):
    name = "adam"
    slots = ("m", "v")
    decoupled = False

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: Any) -> None:
        h = self.hyper
        dt = p.dtype.type
        b1, b2, wd = dt(h["beta1"]), dt(h["beta2"]), dt(h["weight_decay"])
        if h["weight_decay"] and not self.decoupled:
            g = g + wd * p
        m = self._slot("m", name, p)
        v = self._slot("v", name, p)
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        mhat = m / dt(1.0 - h["beta1"] ** self.t)
        vhat = v / dt(1.0 - h["beta2"] ** self.t)
        if h["weight_decay"] and self.decoupled:
            p -= lr * wd * p
        p -= lr * mhat / (np.sqrt(vhat) + dt(h["eps"]))


class AdamW(Adam):
    name = "adamw"
    decoupled = True

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(beta1, beta2, eps, weight_decay)


class RMSprop(Optimizer):
    name = "rmsprop"
    slots = ("sq", "buf")

    def __init__(self, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: Any) -> None:
        h = self.hyper
        dt = p.dtype.type
        if h["weight_decay"]:
            g = g + dt(h["weight_decay"]) * p
        a = dt(h["alpha"])
        sq = self._slot("sq", name, p)
        sq *= a
        sq += (1 - a) * g * g
        step = g / (np.sqrt(sq) + dt(h["eps"]))
        if h["momentum"]:
            buf = self._slot("buf", name, p)
            buf *= dt(h["momentum"])
            buf += step
            step = buf
        p -= lr * step


_CLASSES: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW,
                                        "rmsprop": RMSprop}


def make_optimizer(name: str, **hyper: Any) -> Optimizer:
    """``sgd`` (momentum, nesterov, weight_decay), ``adam``/``adamw`` (beta1, beta2, eps,
    weight_decay), ``rmsprop`` (alpha, eps, momentum, weight_decay); None values = defaults."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise error("E805", f"unknown optimizer '{name}'", None,
                    hint="one of " + ", ".join(OPTIMIZERS))
    given = {k: v for k, v in hyper.items() if v is not None}
    import inspect
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for k in given:
        if k not in allowed:
            raise error("E805", f"optimizer {name} has no option '{k}'", None,
                        hint="its options are " + ", ".join(sorted(allowed)))
        v = given[k]
        if not isinstance(v, bool) and (not math.isfinite(float(v)) or float(v) < 0):
            raise error("E805", f"{name} option {k} must be finite and >= 0, got {v}", None)
    return cls(**given)


# clipping ------------------------------------------------------------------------------------
def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(grads[k], dtype=np.float64)))
                         for k in sorted(grads)))


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scales every gradient by ``max_norm / norm`` when the global norm exceeds it (in place);
    returns the norm before clipping."""
    norm = global_norm(grads)
    if norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for k in grads:
            grads[k] = grads[k] * grads[k].dtype.type(scale)
    return norm


def clip_by_value(grads: dict[str, np.ndarray], limit: float) -> None:
    for k in grads:
        grads[k] = np.clip(grads[k], -limit, limit)


# schedules -----------------------------------------------------------------------------------
Schedule = Callable[[int], float]


def make_schedule(name: str, lr: float, *, total_steps: int = 0, step_size: int = 0,
                  gamma: float = 0.1, warmup: int = 0, min_lr: float = 0.0) -> Schedule:
    """Learning rate at 0-based global step: ``constant``, ``step`` (times ``gamma`` every
    ``step_size`` steps), ``cosine`` (from ``lr`` to ``min_lr`` over ``total_steps``), each
    optionally after a linear warm-up over ``warmup`` steps."""
    if not (math.isfinite(lr) and lr > 0):
        raise error("E805", f"the learning rate must be > 0, got {lr}", None)
    if warmup < 0:
        raise error("E805", "--warmup must be >= 0", None)
    if name == "constant":
        def base(s: int) -> float:
            return lr
    elif name == "step":
        if step_size <= 0:
            raise error("E805", "the step schedule needs --step-size > 0", None)

        def base(s: int) -> float:
            return lr * gamma ** (s // step_size)
    elif name == "cosine":
        span = max(1, total_steps - warmup)

        def base(s: int) -> float:
            frac = min(1.0, max(0, s - warmup) / span)
            return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    else:
        raise error("E805", f"unknown schedule '{name}'", None,
                    hint="one of " + ", ".join(SCHEDULES))

    def sched(s: int) -> float:
        if warmup and s < warmup:
            return base(s) * (s + 1) / warmup
        return base(s)

    return sched
