"""The Python API: binding sizes from data, inputs and lengths checks, save/load, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import RnnUserError

SPEC = """
model tagger(H = 4, F, O = 3) {
  input x: seq[F]
  param Wy[H, O] = glorot
  param by[O] = zeros
  enc = lstm(H) over x
  output y = enc @ Wy + by
  output last_h = last(enc)
}
"""


@pytest.fixture(scope="module")
def model(cache_dir: Path) -> rnnlang.Model:
    return rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir)


def test_sizes_are_inferred_from_data_on_first_call(model: rnnlang.Model) -> None:
    m = rnnlang.compile(SPEC, dtype="float64", cache_dir=model.options.cache_dir)
    assert m.params == {}  # F is unknown until data arrives
    out = m.forward(x=np.zeros((5, 2, 7)))
    assert m.params["enc.W"].shape == (7, 16)
    assert out["y"].shape == (5, 2, 3) and out["last_h"].shape == (2, 4)


def test_given_sizes_allocate_at_compile_time(cache_dir: Path) -> None:
    m = rnnlang.compile(SPEC, target="reference", F=2, H=5)
    assert m.params["enc.U"].shape == (5, 20) and m.params["enc.U"].dtype == np.float32


def test_seeded_init_is_reproducible_and_seed_dependent() -> None:
    a = rnnlang.compile(SPEC, target="reference", F=2, seed=1)
    b = rnnlang.compile(SPEC, target="reference", F=2, seed=1)
    c = rnnlang.compile(SPEC, target="reference", F=2, seed=2)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["enc.W"], c.params["enc.W"])


def test_orthogonal_init_is_orthogonal_per_gate() -> None:
    m = rnnlang.compile(SPEC, target="reference", dtype="float64", F=2, H=6)
    u = m.params["enc.U"]
    for k in range(4):
        block = u[:, 6 * k: 6 * (k + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(6), atol=1e-12)


def test_lengths_mask_padding(model: rnnlang.Model) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 3))
    out = model.forward(x=x, lengths=np.array([6, 3]))
    short = model.forward(x=x[:3, 1:2])
    np.testing.assert_allclose(out["last_h"][1], short["last_h"][0], atol=1e-12)
    np.testing.assert_allclose(out["y"][:3, 1], short["y"][:, 0], atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"z": np.zeros((2, 2, 3))}, "has no input 'z'"),
    ({"x": np.zeros((2, 3))}, "expected (T, B, F)"),
    ({"x": np.zeros((2, 2, 5))}, "size F"),
    ({"x": np.array([[["a"]]])}, "real number array"),
])
def test_bad_inputs_give_clear_errors(model: rnnlang.Model, kwargs: dict[str, np.ndarray],
                                      message: str) -> None:
    model.forward(x=np.zeros((2, 2, 3)))  # binds F = 3
    with pytest.raises(RnnUserError) as exc:
        model.forward(**kwargs)
    assert message in exc.value.render()


@pytest.mark.parametrize("lengths", [np.array([0, 2]), np.array([3, 9]), np.array([1.5, 2]),
                                     np.array([1, 2, 3])])
def test_bad_lengths(model: rnnlang.Model, lengths: np.ndarray) -> None:
    with pytest.raises(RnnUserError, match="lengths"):
        model.forward(x=np.zeros((4, 2, 3)), lengths=lengths)


def test_initial_states_are_inputs_with_gradients(model: rnnlang.Model) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 3))
    h0 = rng.normal(size=(2, 4))
    a = model.forward(x=x, initial={"enc.h0": h0})
    b = model.forward(x=x)
    assert not np.allclose(a["y"], b["y"])
    g = model.vjp({"x": x}, {"last_h": np.ones((2, 4))}, initial={"enc.h0": h0})
    assert set(g.inputs) == {"x", "enc.h0", "enc.c0"}
    with pytest.raises(RnnUserError, match="unknown initial state"):
        model.forward(x=x, initial={"enc.q0": h0})


def test_value_and_grad(model: rnnlang.Model) -> None:
    x = np.random.default_rng(2).normal(size=(3, 2, 3))

    def loss(outs: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        return float((outs["y"] ** 2).sum() / 2), {"y": outs["y"]}

    g = model.value_and_grad(loss, {"x": x})
    y = model.forward(x=x)["y"]
    assert g.loss == pytest.approx(float((y ** 2).sum() / 2))
    g2 = model.vjp({"x": x}, {"y": y})
    for k in g.params:
        np.testing.assert_allclose(g.params[k], g2.params[k])


def test_save_load_roundtrip(model: rnnlang.Model, tmp_path: Path) -> None:
    model.forward(x=np.zeros((2, 2, 3)))
    path = tmp_path / "p.npz"
    model.save(path)
    other = rnnlang.compile(SPEC, dtype="float64", cache_dir=model.options.cache_dir, F=3)
    other.load(path)
    for k, v in model.params.items():
        np.testing.assert_array_equal(other.params[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temp files left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle", "missing"])
def test_damaged_parameter_files_are_clear_errors(model: rnnlang.Model, tmp_path: Path,
                                                  damage: str) -> None:
    path = tmp_path / "p.npz"
    model.forward(x=np.zeros((2, 2, 3)))
    model.save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "pickle":
        np.savez(path, **{"enc.W": np.array([object()], dtype=object)})
    else:
        path.unlink()
    with pytest.raises(RnnUserError):
        model.load(path)


def test_loading_other_shapes_is_an_error(model: rnnlang.Model, tmp_path: Path) -> None:
    model.forward(x=np.zeros((2, 2, 3)))
    small = rnnlang.compile(SPEC, target="reference", dtype="float64", F=3, H=2)
    path = tmp_path / "small.npz"
    small.save(path)
    with pytest.raises(RnnUserError, match="shape"):
        model.load(path)


def test_unknown_target_dtype_and_size(cache_dir: Path) -> None:
    with pytest.raises(RnnUserError, match="target"):
        rnnlang.compile(SPEC, target="tpu")
    with pytest.raises(RnnUserError, match="dtype"):
        rnnlang.compile(SPEC, dtype="int8")
    with pytest.raises(RnnUserError, match="no size 'Q'"):
        rnnlang.compile(SPEC, Q=3)


def test_cuda_target_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(RnnUserError) as exc:
        rnnlang.compile(SPEC, target="cuda")
    assert "cuda" in exc.value.render().lower()


def test_sizes_remembered_per_call_never_mix_lengths_or_shapes(cache_dir: Path) -> None:
    """Binding remembers masks and checks per sizes (a small model's forward cost as much
    again without it); lengths and new sizes must still take effect on every call."""
    m = rnnlang.compile(SPEC, cache_dir=cache_dir, dtype="float64")
    ref = rnnlang.compile(SPEC, target="reference", dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3, 4))
    full = m.forward({"x": x})
    ref.params = {k: v.copy() for k, v in m.params.items()}
    lengths = np.array([5, 2, 4])
    short = m.forward({"x": x}, lengths=lengths)
    again = m.forward({"x": x})
    want_short = ref.forward({"x": x}, lengths=lengths)
    for k in full:
        np.testing.assert_array_equal(full[k], again[k])
        np.testing.assert_allclose(short[k], want_short[k], rtol=1e-10, atol=1e-12)
        assert not np.allclose(short[k], full[k])
    x7 = rng.normal(size=(7, 3, 4))
    got, want = m.forward({"x": x7}), ref.forward({"x": x7})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12)


def test_blas_threads_limited_only_for_rnnlangs_blas_and_restored(cache_dir: Path) -> None:
    """blas_threads=1 limits the BLAS libraries generated code calls (SciPy's OpenBLAS, and
    NumPy's when `blas.LIBRARY` bound it) during a call and puts the counts back after; no
    other BLAS library is touched."""
    import os

    from rnnlang.codegen import blas
    threadpoolctl = pytest.importorskip("threadpoolctl")
    m = rnnlang.compile(SPEC, cache_dir=cache_dir, blas_threads=1)
    limit = m._executor()._limit
    if limit is None:
        pytest.skip("no controllable BLAS found")

    def counts() -> dict[str, int]:
        return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i.get("user_api") == "blas"}

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = counts()
        if all(n == 1 for n in before.values()):
            pytest.skip("BLAS runs one thread here: nothing to limit")
        with limit():
            inside = counts()
        assert counts() == before
    changed = {p for p in before if inside[p] != before[p]}
    assert changed and all(inside[p] == 1 for p in changed)
    ours = {os.path.realpath(p) for p in before if "scipy.libs" in p}
    if blas.LIBRARY is not None:
        ours.add(os.path.realpath(blas.LIBRARY))
    assert {os.path.realpath(p) for p in changed} <= ours
    bound = [p for p in before if blas.LIBRARY and os.path.realpath(p) == os.path.realpath(
        blas.LIBRARY)]
    assert all(inside[p] == 1 for p in bound)


def test_quick_binding_repeats_the_first_bindings_checks(cache_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A call whose inputs look like an earlier call's (names, shapes, the model's dtype, C
    order; no lengths or initial states) reuses that binding (`runtime.QuickBind`); anything
    else binds afresh, and replaced parameters are still checked on every call."""
    import rnnlang.api as api

    m = rnnlang.compile(SPEC, cache_dir=cache_dir, dtype="float64")
    ref = rnnlang.compile(SPEC, target="reference", dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3, 4))
    m.forward({"x": x})
    ref.params = {k: v.copy() for k, v in m.params.items()}
    fresh = []
    real = api.bind_inputs
    monkeypatch.setattr(api, "bind_inputs", lambda prog, *a: (
        prog is m.program and fresh.append(1)) or real(prog, *a))

    def check(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12)

    x2 = rng.normal(size=(5, 3, 4))
    check(m.forward({"x": x2}), ref.forward({"x": x2}))
    assert not fresh  # same names, shapes, dtype and order: the first binding serves
    check(m.forward(x=x2), ref.forward(x=x2))
    assert not fresh
    g, gr = m.vjp({"x": x2}, {"y": np.ones((5, 3, 3))}), ref.vjp({"x": x2}, {"y": np.ones(
        (5, 3, 3))})
    check(g.params, gr.params)
    assert not fresh
    for other in (x2.astype(np.float32), np.asfortranarray(x2), x2[::-1], x2.tolist()):
        check(m.forward({"x": other}), ref.forward({"x": np.asarray(other)}))
    assert len(fresh) == 4
    h0 = {"enc.h0": rng.normal(size=(3, 4)), "enc.c0": rng.normal(size=(3, 4))}
    check(m.forward({"x": x2}, initial=h0), ref.forward({"x": x2}, initial=h0))
    lengths = np.array([5, 2, 4])
    check(m.forward({"x": x2}, lengths=lengths), ref.forward({"x": x2}, lengths=lengths))
    assert len(fresh) == 6
    check(m.forward({"x": x2}), ref.forward({"x": x2}))  # zero states and full masks again
    assert len(fresh) == 6
    with pytest.raises(RnnUserError, match="E601"):
        m.forward({"x": x2, "z": x2})
    m.params["enc.U"] = m.params["enc.U"][:, :8]
    with pytest.raises(RnnUserError, match="E602"):
        m.forward({"x": x2})
    m.params["enc.U"] = ref.params["enc.U"].astype(np.float32)  # converted, as before
    ref.params["enc.U"] = m.params["enc.U"].astype(np.float64)
    check(m.forward({"x": x2}), ref.forward({"x": x2}))
    assert m.params["enc.U"].dtype == np.float64
