"""Shared fixtures: golden files, one Numba cache per test session, hypothesis profile."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

GOLDEN = Path(__file__).parent / "golden"

settings.register_profile(
    "ci", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated modules for this session: compiled once, reused by every test."""
    return tmp_path_factory.mktemp("rnncache")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """golden(name, text): compare with tests/golden/<module>/<name>.txt (or rewrite it)."""
    module = Path(str(request.node.fspath)).stem

    def check(name: str, text: str) -> None:
        path = GOLDEN / module / f"{name}.txt"
        if request.config.getoption("--update-golden"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        assert path.exists(), f"missing golden {path}; run pytest --update-golden"
        assert text == path.read_text(), f"output differs from {path}"

    return check


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the CUDA-simulator subprocess of test_cuda_sim.py as soon as it is known to be
    selected, so that it runs alongside the rest of the suite."""
    for item in items:
        if item.name == "test_cuda_target_in_the_simulator":
            start = getattr(item.module, "start_simulator_run", None)
            if start is not None:
                config._rnnlang_cudasim = start()  # type: ignore[attr-defined]
            return


def pytest_unconfigure(config: pytest.Config) -> None:
    started = getattr(config, "_rnnlang_cudasim", None)
    if started is not None and started[0].poll() is None:
        started[0].kill()  # the run was interrupted before the test collected it


@pytest.fixture
def poisoned_workspaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every work array starts as NaN (as a reused one may hold anything): an array the
    generated code takes without zeroing and reads before it has written it spoils the
    results (`rnnlang.codegen.scan._fully_written` decides which need no zeroing)."""
    import numpy as np

    from rnnlang.codegen.workspace import Workspace

    empty = Workspace.empty

    def nan_empty(self: Workspace, slot: int, shape: tuple[int, ...], dtype: object
                  ) -> np.ndarray:
        a = empty(self, slot, shape, dtype)
        a.fill(np.nan)
        return a

    monkeypatch.setattr(Workspace, "empty", nan_empty)
