"""`rnnc graph` and `rnnc compile --report`: graph structure, escaping, rendering, reports.

Graph shapes are checked on the `Graph` objects (no Graphviz needed); rendering tests run only
where Graphviz's `dot` is installed. Nothing here JIT-compiles a model.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

import rnnlang
from rnnlang import cli
from rnnlang.cli_viz import add_commands, report_text
from rnnlang.diagnostics import RnnUserError
from rnnlang.viz import model_graph, named_cell_graph, to_dot
from rnnlang.viz import render as R
from rnnlang.viz.dot import Graph, html_escape, label_text, plain, quote

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.rnn"))
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz 'dot' is not installed")
Golden = Callable[[str, str], None]

ELMAN = """
model m(F = 3, H = 4, O = 2) {
  input x: seq[F]
  param Wy[H, O] = glorot
  h = elman(H) over x
  output y = h @ Wy
}
"""
LSTM = ELMAN.replace("elman(H)", "lstm(H)")
STACK = ELMAN.replace("elman(H)", "stack(lstm(H), 2)")
SEQ2SEQ = ROOT / "examples" / "seq2seq.rnn"


def labels(g: Graph) -> list[str]:
    return [label_text(n.label) for n in g.nodes]


# --- unrolled graphs: node and edge counts -----------------------------------------------------
@pytest.mark.parametrize("K", [1, 3, 4])
def test_unrolled_elman(K: int) -> None:
    g = model_graph(ELMAN, unfold=K)
    # x, s, y per step; dashed s before and after the window
    assert len(g.nodes) == 3 * K + 2
    # x->s, s->y per step; s->s between steps, plus one in from and one out to the window
    assert len(g.edges) == 3 * K + 1
    ghosts = [n for n in g.nodes if "dashed" in n.attrs.get("style", "")]
    assert len(ghosts) == 2


def test_unrolled_elman_labels_steps_around_t() -> None:
    g = model_graph(ELMAN, unfold=3)
    names = labels(g)
    for want in ("x_{t-1}", "x_{t}", "x_{t+1}", "s_{t-2}", "s_{t-1}", "s_{t}", "s_{t+1}",
                 "s_{t+2}", "y_{t}"):
        assert want in names, want
    by_label = {label_text(n.label): n.id for n in g.nodes}
    recur = {(e.src, e.dst) for e in g.edges if label_text(e.label) == "Ws"}
    assert (by_label["s_{t-1}"], by_label["s_{t}"]) in recur
    assert (by_label["s_{t+1}"], by_label["s_{t+2}"]) in recur


@pytest.mark.parametrize("K", [2, 3, 5])
def test_unrolled_lstm(K: int) -> None:
    g = model_graph(LSTM, unfold=K)
    assert len(g.nodes) == 3 * K + 2  # x, the cell (h, c), y; dashed cells at both ends
    # x->cell and cell->y per step; h and c each passed between steps, in and out of the window
    assert len(g.edges) == 4 * K + 2
    passed = sorted(label_text(e.label) for e in g.edges if e.attrs.get("color"))
    assert passed == sorted(["c"] * (K + 1) + ["h \u00b7 U"] * (K + 1))


@pytest.mark.parametrize("K", [2, 3])
def test_unrolled_two_layer_stack(K: int) -> None:
    g = model_graph(STACK, unfold=K)
    assert len(g.nodes) == 4 * K + 4
    # x->enc.0, enc.0->enc.1, enc.1->y per step; (h, c) through time in each layer
    assert len(g.edges) == 3 * K + 2 * (2 * K + 2)
    assert any(n.startswith("h.1 h_{") for n in labels(g))


@pytest.mark.parametrize("K", [2, 3])
def test_unrolled_encoder_decoder(K: int) -> None:
    g = model_graph(SEQ2SEQ, unfold=K)
    # src, tgt, enc.0, enc.1, dec.0, dec.1, logits per step + the encoder's initial states
    assert len(g.nodes) == 7 * K + 2
    # per step: src->enc.0->enc.1, tgt->dec.0->dec.1->logits; (h, c) between steps of 4 layers
    # (K-1 each, plus the first step's from the initial state or from the encoder's last)
    assert len(g.edges) == 5 * K + 4 * 2 * K
    by_label = {label_text(n.label): n.id for n in g.nodes}
    handoff = {(e.src, e.dst) for e in g.edges}
    enc_last = by_label[f"enc.0 h_{{{K}}}, c_{{{K}}}"]
    dec_first = by_label["dec.0 h_{1}, c_{1}"]
    assert (enc_last, dec_first) in handoff
    assert "from the start" in label_text(g.label)


def test_unrolled_delay_two_is_a_longer_edge() -> None:
    g = model_graph(ROOT / "examples" / "tdnn.rnn", unfold=5)
    by_id = {n.id: label_text(n.label) for n in g.nodes}
    long = [(by_id[e.src], by_id[e.dst]) for e in g.edges if label_text(e.label) == "U2"]
    assert ("s_{t-2}", "s_{t}") in long and ("s_{t}", "s_{t+2}") in long
    w2 = [(by_id[e.src], by_id[e.dst]) for e in g.edges if label_text(e.label) == "W2"]
    assert ("x_{t-1}", "s_{t+1}") in w2


def test_unrolled_bidirectional_runs_backwards() -> None:
    g = model_graph(ROOT / "examples" / "cnn_rnn.rnn", unfold=3)
    back = [e for e in g.edges if e.attrs.get("dir") == "back"]
    assert back and all(e.src.split("_")[0] == e.dst.split("_")[0] for e in back)
    assert g.hidden  # the backward row is kept above the forward one


def test_unfold_limits() -> None:
    with pytest.raises(RnnUserError):
        model_graph(ELMAN, unfold=0)
    with pytest.raises(RnnUserError):
        model_graph(ELMAN, unfold=65)


# --- folded and cell views ---------------------------------------------------------------------
def test_folded_lstm_loops_and_clusters() -> None:
    g = model_graph(STACK)
    assert [c.id for c in g.clusters] == ["h.0", "h.1"]
    loops = [label_text(e.label) for e in g.edges if e.src == e.dst]
    assert sorted(loops) == ["U [t-1]", "U [t-1]", "[t-1]", "[t-1]"]
    assert "y = h @ Wy" in labels(g)[-1].splitlines()[0]


def test_folded_seq2seq_hands_states_from_encoder_to_decoder() -> None:
    g = model_graph(SEQ2SEQ)
    handoffs = [e for e in g.edges if "lhead" in e.attrs]
    assert [(e.attrs["ltail"], e.attrs["lhead"]) for e in handoffs] == [
        ("cluster_enc.0", "cluster_dec.0"), ("cluster_enc.1", "cluster_dec.1")]
    assert label_text(handoffs[0].label) == "final h, c \u2192 initial"


def test_cell_view_lstm() -> None:
    g = named_cell_graph(ROOT / "examples" / "tagger.rnn", "lstm")
    names = labels(g)
    assert "x [I]" in names and "h[t-1]" in names and "c[t-1]" in names
    assert any(n.startswith("W [I, 4*H]") for n in names)
    assert any(n.startswith("c = sigmoid(f) * c[t-1]") for n in names)
    assert len(g.nodes) == 1 + 3 + 3 + 2  # port, params, equations, delayed states
    gates = [label_text(e.label) for e in g.edges if label_text(e.label)]
    assert sorted(gates) == ["f, i, g", "o"]
    with pytest.raises(RnnUserError) as exc:
        named_cell_graph(ROOT / "examples" / "tagger.rnn", "lstn")
    assert "lstm" in exc.value.render()


# --- every parameter is named ------------------------------------------------------------------
def _tokens(text: str) -> set[str]:
    return set(re.split(r"[\s,;:=()\[\]|@+*/<>\"']+", text))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_dot_text_names_every_parameter(path: Path) -> None:
    m = rnnlang.compile(path, target="reference")
    for unfold in (None, 3):
        text = to_dot(model_graph(path, unfold=unfold))
        missing = set(m.params) - _tokens(text)
        assert not missing, (unfold, missing)


def _svg_strings(svg: bytes) -> str:
    root = ET.fromstring(svg)
    parts = []
    for el in root.iter():
        parts.append(el.text or "")
        parts.extend(el.attrib.values())
    return " ".join(parts)


@needs_dot
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_svg_parses_and_names_every_parameter(path: Path) -> None:
    m = rnnlang.compile(path, target="reference")
    svg = R.render_dot(to_dot(model_graph(path)), "svg")
    missing = set(m.params) - _tokens(_svg_strings(svg))
    assert not missing


# --- escaping ----------------------------------------------------------------------------------
def test_escaping_functions() -> None:
    assert quote('a"b\\c\nd') == '"a\\"b\u29f5c d"'
    assert quote("\\N \\G") == '"\u29f5N \u29f5G"'  # Graphviz would expand \N, \G
    assert html_escape("<b>&\"'x") == "&lt;b&gt;&amp;&quot;&#39;x"
    assert html_escape("a\x00b\\l") == "a?b\u29f5l"


HOSTILE = ['"; node [label="pwned"]; "', "<B>bold</B> & ]] \\N \\G", "a\\\"b", "x\ny\r\tz",
           "}}} digraph {"]


def test_hostile_labels_stay_labels() -> None:
    g = Graph('evil"name')
    for k, text in enumerate(HOSTILE):
        g.add_node(f"n{k}", plain(text), tooltip=text)
    g.add_edge("n0", "n1", plain(HOSTILE[0]), tooltip=HOSTILE[1])
    text = to_dot(g)
    assert "pwned\"]" not in text.replace('\\"', "")
    assert text.count("->") == 1
    if HAVE_DOT:
        raw = R.render_dot(text, "svg")
        assert raw.count(b'class="node"') == len(HOSTILE) and raw.count(b'class="edge"') == 1
        svg = _svg_strings(raw)
        for t in HOSTILE:
            for piece in t.replace("\\", "\u29f5").split():
                assert piece in svg


@needs_dot
def test_odd_file_name_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / 'we"ird <&> \\N.rnn'
    path.write_text(ELMAN)
    svg = _svg_strings(R.render_dot(to_dot(model_graph(path, unfold=2)), "svg"))
    assert 'we"ird <&> \u29f5N.rnn' in svg


# --- rendering and the command -----------------------------------------------------------------
def rnnc(*argv: str) -> tuple[int, str]:
    p = argparse.ArgumentParser(prog="rnnc")
    sub = p.add_subparsers(dest="cmd")
    cmds = add_commands(sub, cli._common)
    args = p.parse_args(list(argv))
    out = io.StringIO()
    code = cmds[args.cmd](args, out)
    return code, out.getvalue()


def test_cli_graph_prints_dot() -> None:
    code, out = rnnc("graph", str(SEQ2SEQ), "--unfold", "3")
    assert code == 0 and out.startswith("digraph seq2seq {")
    code, out = rnnc("graph", str(SEQ2SEQ), "--cell", "gru")
    assert code == 0 and "cell gru" in out


def test_cli_graph_writes_dot_file(tmp_path: Path) -> None:
    code, out = rnnc("graph", str(SEQ2SEQ), "--folded", "-o", str(tmp_path / "g.dot"))
    assert code == 0 and out == f"wrote {tmp_path / 'g.dot'}\n"
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("argv", [["-o", "g.jpg"], ["--unfold", "0"], ["--from-start"],
                                  ["--unfold", "3", "--cell", "lstm"]])
def test_cli_graph_usage_errors(argv: list[str]) -> None:
    try:
        code, _ = rnnc("graph", str(SEQ2SEQ), *argv)
    except SystemExit as exc:  # argparse: mutually exclusive options
        code = int(exc.code or 0)
    assert code == 2


def test_without_dot_falls_back_to_dot_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(R, "find_dot", lambda: None)
    code, out = rnnc("graph", str(SEQ2SEQ), "-o", str(tmp_path / "g.svg"))
    assert code == 0 and out == ""
    assert not (tmp_path / "g.svg").exists()
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    err = capsys.readouterr().err
    assert "Graphviz 'dot' was not found" in err and "apt-get install graphviz" in err


@needs_dot
def test_render_png_and_svg(tmp_path: Path) -> None:
    code, _ = rnnc("graph", str(ROOT / "examples" / "tagger.rnn"), "--unfold", "3", "-o",
                   str(tmp_path / "g.png"))
    assert code == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = R.write_graph(to_dot(model_graph(ELMAN)), tmp_path / "g.svg")
    assert written.note is None
    ET.fromstring((tmp_path / "g.svg").read_bytes())


@needs_dot
def test_dot_failure_is_a_user_error() -> None:
    with pytest.raises(RnnUserError) as exc:
        R.render_dot("digraph {", "svg")
    assert "Graphviz 'dot' failed" in exc.value.render()


def test_dot_timeout_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*a: object, **k: object) -> None:
        raise subprocess.TimeoutExpired("dot", 1)

    monkeypatch.setattr(R.subprocess, "run", slow)
    with pytest.raises(RnnUserError) as exc:
        R.render_dot("digraph {}", "svg", dot="dot")
    assert "did not finish" in exc.value.render()


# --- compile --report --------------------------------------------------------------------------
MGU = """
model m(F = 4, H = 8) {
  input x: seq[F]
  h = mgu(H) over x
  output y = mean(h)
}
"""


def test_report_golden(golden: Golden, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    golden("report_elman", report_text(rnnlang.compile("examples/elman.rnn",
                                                       target="reference")))
    golden("report_mgu", report_text(rnnlang.compile(MGU, target="reference")))
    o0 = ("fuse_gate_matmuls", "hoist_input_projections", "dce", "hoist_weight_gradients")
    golden("report_mgu_O0", report_text(rnnlang.compile(MGU, target="reference",
                                                        disable_passes=o0)))


def test_report_without_sizes() -> None:
    text = report_text(rnnlang.compile(ELMAN.replace("F = 3", "F"), target="reference"))
    assert "their sizes depend on F (give -D F=...)" in text
    assert "FLOPs per time step: depend on F" in text


def test_every_documented_model_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model in docs/language.md builds all three kinds of graph (no rendering)."""
    from rnnlang.syntax.parse import parse
    from tests.unit.test_docs import extract_blocks

    monkeypatch.chdir(ROOT / "docs")  # imports in the blocks are relative to docs/
    n = 0
    for block in extract_blocks(ROOT / "docs" / "language.md"):
        if block.kind != "rnn":
            continue
        for m in parse(block.text, "block.rnn").models:
            for unfold in (None, 2):
                text = to_dot(model_graph(block.text, model=m.name, unfold=unfold))
                assert text.startswith("digraph"), block.id
                n += 1
    assert n > 20


def test_graph_of_a_bad_spec_is_a_user_error() -> None:
    with pytest.raises(RnnUserError) as exc:
        model_graph("model m(H = 2) {\n  input x: seq[3]\n  output y = x @ W\n}\n")
    assert "unknown name 'W'" in exc.value.render()


def test_graph_picks_the_model() -> None:
    code, out = rnnc("graph", str(ROOT / "examples" / "custom_cells.rnn"), "--model", "stacked")
    assert code == 0 and out.startswith("digraph stacked {")
    g = model_graph(ROOT / "examples" / "custom_cells.rnn", model="stacked")
    assert [c.id for c in g.clusters] == ["enc.0", "enc.1", "enc.2"]


def test_graph_text_is_the_ir_printer() -> None:
    import io

    from rnnlang.cli import main
    from rnnlang.ir.printer import print_program

    buf = io.StringIO()
    spec = str(ROOT / "examples" / "tagger.rnn")
    assert main(["graph", spec, "--text"], out=buf) == 0
    want = print_program(rnnlang.compile(spec, target="reference").program)
    assert buf.getvalue() == want
