"""``train [MODEL] { ... }`` sections: parsing, checking (located E806 errors with hints) and
the settings they give (no model is compiled here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnlang.diagnostics import RnnUserError
from rnnlang.lower import check_module, train_section
from rnnlang.syntax import ast
from rnnlang.syntax.parse import parse
from rnnlang.train.losses import LossSpec

MODEL = """model tagger(H = 4, F = 3, O = 5) {
  input x: seq[F]
  param Wy[H, O] = glorot
  h = gru(H) over x
  output y = h @ Wy
  output z = last(h)
}
"""


def _section(body: str, head: str = "train tagger") -> dict[str, object]:
    return train_section(parse(MODEL + head + " {\n" + body + "\n}\n", "m.rnn"), "tagger",
                         Path("/specs"))


def _error(body: str, head: str = "train tagger") -> str:
    module = parse(MODEL + head + " {\n" + body + "\n}\n", "m.rnn")
    with pytest.raises(RnnUserError) as exc:
        check_module(module, None)
    text = exc.value.render()
    assert "error[E806]" in text, text
    return text


def test_full_section() -> None:
    sec = _section("""
  loss y = xent : step
  loss z = mse : last * 0.5      # weights follow the reduction
  target y = labels
  optimizer = sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 1e-4)
  schedule = step(step_size = 100, gamma = 0.5, warmup = 10)
  batch_size = 16
  epochs = 20
  clip_norm = 1.0
  clip_value = 5
  val_split = 0.2
  patience = 3
  seed = 7
  max_steps = 1000
  on_nonfinite = skip
  window = 50
  baseline = none
  data = "train.npz"
  test_data = "/abs/test.npz"
""")
    assert sec == {
        "losses": [LossSpec("y", "xent", "step", "labels", 1.0),
                   LossSpec("z", "mse", "last", None, 0.5)],
        "targets": {"y": "labels"},
        "optimizer": "sgd", "lr": 0.1,
        "optimizer_options": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
        "schedule": "step", "step_size": 100, "gamma": 0.5, "warmup": 10,
        "batch_size": 16, "epochs": 20, "clip_norm": 1.0, "clip_value": 5.0,
        "val_fraction": 0.2, "patience": 3, "seed": 7, "max_steps": 1000,
        "on_nonfinite": "skip", "window": 50, "baseline": "none",
        "data": Path("/specs/train.npz"), "test_data": Path("/abs/test.npz"),
    }


def test_short_forms_and_defaults() -> None:
    sec = _section("loss y = mse * 2\n optimizer = adam\n lr = 0.01\n schedule = cosine",
                   head="train")  # no model name: the file's first model
    assert sec == {"losses": [LossSpec("y", "mse", "step", None, 2.0)], "optimizer": "adam",
                   "optimizer_options": {}, "lr": 0.01, "schedule": "cosine"}
    assert train_section(parse(MODEL), "tagger") == {}  # no section: no settings


def test_ast_and_names_stay_free() -> None:
    """`train` and `loss` are not reserved: they still work as value names in models."""
    m = parse("model m(F = 2) {\n input x: seq[F]\n train = x\n loss = train * 2\n"
              " output y = loss\n}\ntrain m { epochs = 3 }\n")
    check_module(m, None)
    (sec,) = m.trains
    assert isinstance(sec, ast.TrainDef) and sec.model == "m"
    (st,) = sec.body
    assert (st.key, st.sub, st.span.line) == ("epochs", None, 7)


@pytest.mark.parametrize("body, message, hint", [
    ("epoch = 3", "unknown training setting 'epoch'", "did you mean 'epochs'?"),
    ("loss w = mse", "'w' is not an output of model 'tagger'", "its outputs are y, z"),
    ("loss yy = mse", "'yy' is not an output", "did you mean 'y'?"),
    ("target q = labels", "'q' is not an output", None),
    ("loss y = mxe", "unknown loss 'mxe'", "did you mean 'mse'? (one of mse, xent, bce)"),
    ("loss y = mse : lats", "unknown reduction 'lats'", "did you mean 'last'?"),
    ("loss = mse", "'loss' needs the output it applies to", None),
    ("epochs y = 3", "unexpected 'y' after 'epochs'", "write epochs = VALUE"),
    ("epochs = 3 : last", "':' only follows a loss", None),
    ("optimizer = adan", "unknown optimizer 'adan'", "did you mean 'adam'?"),
    ("optimizer = adam(lr = 0.1, momentum = 0.9)", "adam has no option 'momentum'",
     "options: lr, beta1, beta2, eps, weight_decay"),
    ("optimizer = adam(0.1)", "options are given by name", None),
    ("schedule = cosin", "unknown schedule 'cosin'", "did you mean 'cosine'?"),
    ("epochs = 2.5", "epochs must be a whole number, got 2.5", None),
    ("epochs = x @ W", "epochs must be a number", None),
    ("batch_size = 0", "batch_size must be between 1 and 1000000, got 0", None),
    ("clip_norm = -1", "clip_norm must be > 0, got -1", None),
    ("val_split = 1", "val_split must be in [0, 1), got 1", None),
    ("on_nonfinite = ignore", "unknown on_nonfinite 'ignore'", "one of stop, skip"),
    ("optimizer = sgd(nesterov = yes)", "unknown nesterov 'yes'", "one of true, false"),
    ("patience = 2", "patience needs validation data", None),
    ("epochs = 1\n  epochs = 2", "'epochs' is set twice", "the first is on line 9"),
    ("lr = 0.1\n  optimizer = sgd(lr = 0.2)", "the learning rate is set twice", None),
    ("warmup = 1\n  schedule = cosine(warmup = 2)", "'warmup' is set twice", None),
    ("data = train", "data must be a file path in quotes", None),
    ("seed = \"7\"", "seed takes no string", None),
    ("target y = 3", "target names the data array", None),
])
def test_errors(body: str, message: str, hint: str | None) -> None:
    text = _error(body)
    line = 9 + body.count("\n")  # the section's last statement
    assert text.startswith(f"m.rnn:{line}:"), text
    assert message in text.splitlines()[0], text
    if hint is not None:
        assert f"hint: {hint}" in text, text


def test_errors_on_the_section() -> None:
    text = _error("epochs = 1", head="train taggr")
    assert "m.rnn:8:7: error[E806]: train section for 'taggr', which is not a model" in text
    assert "did you mean 'tagger'?" in text
    module = parse(MODEL + "train tagger { epochs = 1 }\ntrain { epochs = 2 }\n", "m.rnn")
    with pytest.raises(RnnUserError, match="model 'tagger' has two train sections"):
        check_module(module, None)
    with pytest.raises(RnnUserError, match="E806"):
        train_section(module, "tagger")


def test_errors_are_collected_with_the_models() -> None:
    """`rnnc check` reports a bad model and a bad train section together."""
    bad = MODEL.replace("h @ Wy", "h @ Wq") + "train { epoch = 1 }\n"
    with pytest.raises(RnnUserError) as exc:
        check_module(parse(bad, "m.rnn"), None)
    codes = [d.code for d in exc.value.diagnostics]
    assert "E806" in codes and len(codes) == 2, exc.value.render()


def test_syntax_errors() -> None:
    with pytest.raises(RnnUserError, match="E101"):
        parse(MODEL + "train tagger { epochs 3 }")
    with pytest.raises(RnnUserError, match="E101"):
        parse(MODEL + "train tagger { loss y = mse : last * x }")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rnnc check` and `rnnc train` report a bad section at its place; without data in the
    section, `rnnc train` needs --data (nothing is compiled here)."""
    import io

    from rnnlang.cli import main
    bad = tmp_path / "bad.rnn"
    bad.write_text(MODEL + "train {\n  optimizer = adam(momentum = 0.9)\n}\n")
    for argv in (["check", str(bad)], ["train", str(bad), "--data", "x.npz"]):
        assert main(argv, out=io.StringIO()) == 1
        err = capsys.readouterr().err
        assert f"{bad}:9:31: error[E806]: adam has no option 'momentum'" in err, err
    good = tmp_path / "good.rnn"
    good.write_text(MODEL + "train { epochs = 2 }\n")
    assert main(["train", str(good)], out=io.StringIO()) == 2
    assert "give --data FILE" in capsys.readouterr().err
