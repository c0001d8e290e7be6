"""Tests for harmcircuit.plots: figure contents, offline circuitsvis views and escaped tables."""

import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import plotly.graph_objects as go
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmcircuit.plots import (
    ClaimResult,
    GenerationRow,
    PlotDataError,
    attention_view,
    format_number,
    generation_table,
    head_attribution,
    html_table,
    matrix_heatmap,
    overlap_heatmap,
    plotly_text,
    pruning_curves,
    script_safe_json,
    summary_table,
    top_neurons,
    weight_locations,
)

EVIL = "</script><script>alert(1)</script>"


class ParsedHTML(HTMLParser):
    """Collects start tags, script bodies and text the way a browser tokenises them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)


def metric(value, low=None, high=None):
    return {"value": value, "low": low, "high": high}


@pytest.fixture
def pruning_rows():
    return [
        {"condition": "unpruned", "fraction": 0.0, "n_weights": 0,
         "harmful_nll": metric(1.25, 1.2, 1.3), "mmlu": metric(0.3, 0.27, 0.33)},
        {"condition": "random control", "fraction": 1e-5, "n_weights": 1340,
         "harmful_nll": metric(1.26, 1.21, 1.31), "mmlu": metric(0.301, 0.28, 0.33)},
        {"condition": "harm set", "fraction": 1e-5, "n_weights": 1340,
         "harmful_nll": metric(2.5, 2.3, 2.8), "mmlu": metric(0.29, 0.26, 0.32)},
        {"condition": "harm set", "fraction": 1e-6, "n_weights": 134,
         "harmful_nll": metric(1.75, 1.6, 1.9)},
        {"condition": "random control", "fraction": 1e-6, "n_weights": 134,
         "harmful_nll": metric(1.25)},
    ]  # fmt: skip


def test_pruning_curves_traces_and_values(pruning_rows):
    fig = pruning_curves(pruning_rows, {"harmful_nll": "harmful-response NLL", "mmlu": "MMLU"})

    # Per metric: harm set, random control, unpruned line.
    assert len(fig.data) == 6
    names = [trace.name for trace in fig.data]
    assert names == ["harm set", "random control", "unpruned"] * 2

    harm = fig.data[0]
    assert list(harm.x) == [1e-6, 1e-5]
    assert list(harm.y) == [1.75, 2.5]
    assert list(harm.error_y.array) == pytest.approx([0.15, 0.3])
    assert list(harm.error_y.arrayminus) == pytest.approx([0.15, 0.2])
    assert "harmful-response NLL: 2.5" in harm.hovertext[1]
    assert "CI [2.3, 2.8]" in harm.hovertext[1]
    assert "1,340 weights" in harm.hovertext[1]

    control = fig.data[1]
    assert list(control.error_y.array) == [0.0, pytest.approx(0.05)]
    assert "no confidence interval" in control.hovertext[0]

    unpruned = fig.data[2]
    assert list(unpruned.y) == [1.25, 1.25]
    assert list(unpruned.x) == [1e-6, 1e-5]
    assert unpruned.line.dash == "dash"

    # MMLU was evaluated at one fraction only.
    assert list(fig.data[3].x) == [1e-5]
    assert list(fig.data[3].y) == [0.29]
    assert list(fig.data[5].y) == [0.3, 0.3]


def test_pruning_curves_axes_and_legend(pruning_rows):
    fig = pruning_curves(pruning_rows, ["harmful_nll", "mmlu"])
    layout = fig.layout
    assert layout.xaxis.type == "log"
    assert layout.xaxis2.type == "log"
    assert layout.xaxis.title.text == "fraction of scored weights pruned"
    assert layout.yaxis.title.text == "harmful_nll"
    assert [trace.showlegend for trace in fig.data] == [True, True, True, False, False, False]
    # One shaded confidence band for the unpruned value per subplot.
    assert len(layout.shapes) == 2
    assert layout.shapes[0].y0 == 1.2
    assert layout.shapes[0].y1 == 1.3


def test_pruning_curves_unpruned_only_metric(pruning_rows):
    pruning_rows[0]["compliance"] = metric(0.75, 0.7, 0.8)
    fig = pruning_curves(pruning_rows, ["harmful_nll", "compliance"])
    assert len(fig.data) == 4
    line = fig.data[3]
    assert line.name == "unpruned"
    assert list(line.y) == [0.75, 0.75]
    # It spans the fractions of all pruned rows, like the other subplots.
    assert list(line.x) == [1e-6, 1e-5]
    assert line.xaxis == "x2"


def test_pruning_curves_subplot_grid_has_no_empty_axes(pruning_rows):
    names = [f"m{i}" for i in range(5)]
    rows = [
        {**row, **{name: metric(float(i)) for i, name in enumerate(names)}} for row in pruning_rows
    ]
    fig = pruning_curves(rows, names, columns=3)
    xaxes = [key for key in fig.layout.to_plotly_json() if key.startswith("xaxis")]
    assert len(xaxes) == 5
    assert len(fig.data) == 15


def test_pruning_curves_escapes_condition_names(pruning_rows):
    rows = pruning_rows + [
        {"condition": EVIL, "fraction": 1e-5, "n_weights": 3, "harmful_nll": metric(1.0)}
    ]
    fig = pruning_curves(rows, ["harmful_nll"])
    evil_trace = next(trace for trace in fig.data if "alert" in trace.name)
    assert "<script>" not in evil_trace.name
    assert evil_trace.name == plotly_text(EVIL)
    assert "<script>" not in evil_trace.hovertext[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fraction": 0.0}, "fraction > 0"),
        ({"fraction": -1e-5}, "fraction > 0"),
        ({"harmful_nll": 1.5}, "expected a dict"),
    ],
)
def test_pruning_curves_rejects_bad_rows(pruning_rows, change, message):
    pruning_rows[2] = {**pruning_rows[2], **change}
    with pytest.raises(PlotDataError, match=message):
        pruning_curves(pruning_rows, ["harmful_nll"])


def test_pruning_curves_rejects_duplicates_and_gaps(pruning_rows):
    with pytest.raises(PlotDataError, match="two rows at fraction"):
        pruning_curves(pruning_rows + [pruning_rows[2]], ["harmful_nll"])
    with pytest.raises(PlotDataError, match="exactly one"):
        pruning_curves(pruning_rows + [pruning_rows[0]], ["harmful_nll"])
    with pytest.raises(PlotDataError, match="no pruned condition"):
        pruning_curves(pruning_rows[:1], ["harmful_nll"])
    with pytest.raises(PlotDataError, match="no row reports metric 'typo'"):
        pruning_curves(pruning_rows, ["harmful_nll", "typo"])
    with pytest.raises(PlotDataError, match="lacks keys"):
        pruning_curves([{"condition": "harm set"}], ["harmful_nll"])
    with pytest.raises(PlotDataError, match="metrics is empty"):
        pruning_curves(pruning_rows, [])


def test_matrix_heatmap_values_and_text():
    values = np.array([[0.5, -1.25, 2.0], [np.nan, 0.125, -0.3333333]])
    fig = matrix_heatmap(
        values,
        ["malware", "hate"],
        ["malware", "hate", "fraud"],
        "Transfer",
        value_format=".3f",
        colorscale="RdBu",
        zmid=0.0,
        row_title="set found on",
        col_title="category evaluated",
        annotation=[["a", "b", "c"], ["d", "e", "f"]],
    )
    assert len(fig.data) == 1
    heatmap = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heatmap.z, dtype=float), values)
    assert heatmap.zmid == 0.0
    assert heatmap.text[0][1] == "-1.250<br>b"
    assert heatmap.text[1][0] == "n/a<br>d"
    assert heatmap.hovertext[1][2] == (
        "set found on: hate<br>category evaluated: fraud<br>value: -0.333333<br>f"
    )
    assert list(heatmap.y) == ["malware", "hate"]
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.title.text == "Transfer"


def test_matrix_heatmap_rejects_bad_labels():
    values = np.zeros((2, 2))
    with pytest.raises(PlotDataError, match="one label per row"):
        matrix_heatmap(values, ["a"], ["a", "b"], "t")
    with pytest.raises(PlotDataError, match="duplicates"):
        matrix_heatmap(values, ["a", "a"], ["a", "b"], "t")
    with pytest.raises(PlotDataError, match="annotation must have the shape"):
        matrix_heatmap(values, ["a", "b"], ["a", "b"], "t", annotation=[["x"]])


def test_matrix_heatmap_escapes_labels():
    fig = matrix_heatmap(np.ones((1, 1)), [EVIL], ["<b>x</b>"], EVIL)
    heatmap = fig.data[0]
    assert heatmap.y[0] == "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
    assert heatmap.x[0] == "&lt;b&gt;x&lt;/b&gt;"
    assert "<script>" not in fig.layout.title.text


@pytest.mark.parametrize("as_matrix", [False, True])
def test_overlap_heatmap_shows_expectation(as_matrix):
    jaccard = np.array([[1.0, 0.25], [0.25, 1.0]])
    expected = np.full((2, 2), 0.0005) if as_matrix else 0.0005
    fig = overlap_heatmap(jaccard, expected, ["malware", "hate"])
    heatmap = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heatmap.z, dtype=float), jaccard)
    assert heatmap.text[0][1] == "0.25<br>random 0.0005"
    assert "random expectation: 0.0005<br>observed / expected: 500" in heatmap.hovertext[0][1]
    assert heatmap.zmin == 0.0
    assert heatmap.zmax == 1.0


def test_overlap_heatmap_rejects_out_of_range():
    with pytest.raises(PlotDataError, match="lies in"):
        overlap_heatmap(np.array([[1.5]]), 0.1, ["a"])


def test_weight_locations_counts_and_totals():
    counts = np.array([[3, 0, 1], [2, 5, 0]])
    sizes = np.array([[100, 100, 400], [100, 100, 400]])
    fig = weight_locations(counts, ["q", "k", "down"], matrix_sizes=sizes)
    assert len(fig.data) == 2
    bar, heatmap = fig.data
    assert isinstance(bar, go.Bar)
    assert isinstance(heatmap, go.Heatmap)
    assert list(bar.y) == [5.0, 5.0, 1.0]
    assert list(bar.x) == ["q", "k", "down"]
    np.testing.assert_array_equal(np.asarray(heatmap.z, dtype=float), counts)
    assert list(heatmap.y) == ["0", "1"]
    assert heatmap.hovertext[1][1] == (
        "layer 1, k<br>pruned weights: 5<br>45.45% of the set"
        "<br>fraction of this matrix pruned: 0.05"
    )
    assert bar.hovertext[2] == "down, all layers<br>pruned weights: 1<br>9.091% of the set"


def test_weight_locations_rejects_mismatch():
    with pytest.raises(PlotDataError, match="matrix_types has 2 names"):
        weight_locations(np.zeros((2, 3)), ["q", "k"])
    with pytest.raises(PlotDataError, match="negative"):
        weight_locations(-np.ones((2, 2)), ["q", "k"])
    # Under pytest the jaxtyping annotations catch the shape mismatch first (a TypeError).
    with pytest.raises((PlotDataError, TypeError), match="matrix_sizes"):
        weight_locations(np.ones((2, 2)), ["q", "k"], matrix_sizes=np.ones((3, 2)))


def test_head_attribution_diverging_centered():
    scores = np.array([[0.5, -2.0, 0.0], [1.0, 0.25, -0.125]])
    fig = head_attribution(scores, "Head attribution")
    heatmap = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heatmap.z, dtype=float), scores)
    assert heatmap.zmid == 0.0
    assert heatmap.zmin == -2.0
    assert heatmap.zmax == 2.0
    assert heatmap.hovertext[0][1] == "L0H1<br>score: -2"
    assert heatmap.hovertext[1][2] == "L1H2<br>score: -0.125"
    assert list(heatmap.x) == ["0", "1", "2"]


def test_head_attribution_all_zero():
    heatmap = head_attribution(np.zeros((2, 2)), "zeros").data[0]
    assert heatmap.zmin == -1.0
    assert heatmap.zmax == 1.0


def reference_top_neurons(scores, k):
    entries = [
        (abs(scores[layer, index]), layer, index, scores[layer, index])
        for layer in range(scores.shape[0])
        for index in range(scores.shape[1])
        if not math.isnan(scores[layer, index])
    ]
    entries.sort(key=lambda entry: (-entry[0], entry[1], entry[2]))
    return [(f"L{layer}.N{index}", value) for _, layer, index, value in entries[:k]]


@pytest.mark.parametrize("k", [1, 5, 20, 1000])
def test_top_neurons_matches_reference(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(4, 37))
    scores[1, 3] = np.nan
    scores[2, 5] = -scores[0, 7]  # a tie in |score|: the lower layer comes first
    expected = reference_top_neurons(scores, k)
    bar = top_neurons(scores, k=k).data[0]
    assert list(bar.y) == [name for name, _ in expected]
    assert list(bar.x) == [value for _, value in expected]
    assert len(bar.y) == min(k, scores.size - 1)


def test_top_neurons_labels_and_colours():
    scores = np.zeros((3, 10))
    scores[2, 9] = -4.0
    scores[0, 1] = 3.0
    fig = top_neurons(scores, k=2, score_label="attribution")
    bar = fig.data[0]
    assert list(bar.y) == ["L2.N9", "L0.N1"]
    assert list(bar.x) == [-4.0, 3.0]
    assert bar.marker.color[0] != bar.marker.color[1]
    assert bar.hovertext[0] == "L2.N9<br>attribution: -4"
    assert fig.layout.yaxis.autorange == "reversed"
    with pytest.raises(PlotDataError, match="k is 0"):
        top_neurons(scores, k=0)


def attention_inputs(tokens):
    n = len(tokens)
    pattern = np.tril(np.ones((2, n, n)))
    return pattern / pattern.sum(axis=-1, keepdims=True)


def test_attention_view_is_offline_and_escaped():
    tokens = ["<|im_start|>", "user", EVIL, "<b>bold</b>", "a & b"]
    source = attention_view(tokens, attention_inputs(tokens), ["L0H0", "L0H1"])
    parsed = ParsedHTML(source)

    # The hostile token must not open a second script element or close the first one early.
    assert parsed.count("script") == 1
    assert parsed.count("b") == 0
    assert EVIL not in source
    assert "alert(1)" in source
    script = parsed.scripts[0]
    assert script.rstrip().endswith(")")
    assert "CircuitsVis.render(" in script

    # Offline: the bundle is inlined and nothing points at a CDN or a source map.
    assert "unpkg" not in source
    assert "http://" not in source.split("CircuitsVis.render(")[1]
    assert "sourceMappingURL" not in source
    assert all("src" not in attrs for _, attrs in parsed.tags)

    # The props still decode to the exact tokens.
    props_text = re.search(r"CircuitsVis\.AttentionHeads,\s*(\{.*\})\s*\)", script, re.DOTALL)
    assert props_text is not None
    props = json.loads(props_text.group(1))
    assert props["tokens"] == tokens
    assert props["attentionHeadNames"] == ["L0H0", "L0H1"]
    assert np.allclose(props["attention"], attention_inputs(tokens), atol=1e-5)


def test_attention_view_closes_mount_div():
    source = attention_view(["a", "b"], attention_inputs(["a", "b"]))
    assert re.match(r'<div id="circuits-vis-[0-9a-f-]+" style="[^"]*"></div>', source)
    assert "/>" not in source[:200]


def test_attention_view_rejects_mismatch():
    with pytest.raises(PlotDataError, match="2 positions but 3 tokens"):
        attention_view(["a", "b", "c"], attention_inputs(["a", "b"]))
    with pytest.raises(PlotDataError, match="head_names has 1 names for 2 heads"):
        attention_view(["a", "b"], attention_inputs(["a", "b"]), ["L0H0"])


def test_generation_table_escapes_every_cell():
    rows = [
        GenerationRow(
            prompt=f"prompt {EVIL}",
            unpruned=f"response {EVIL}",
            harm_set="I can't help with that.",
            random_control=None,
            verdicts={"unpruned": "complied", "harm set": EVIL},
            category="<i>malware</i>",
        ),
        {"prompt": "second", "verdicts": "refused"},
    ]
    source = generation_table(rows)
    parsed = ParsedHTML(source)
    assert parsed.count("script") == 0
    assert parsed.count("i") == 0
    assert parsed.count("tr") == 3
    assert parsed.count("th") == 5
    assert parsed.count("td") == 10
    text = "".join(parsed.text)
    assert f"prompt {EVIL}" in text
    assert f"response {EVIL}" in text
    assert "I can't help with that." in text
    assert "not generated" in text
    assert f"harm set: {EVIL}" in text
    assert "<i>malware</i>" in text


def test_generation_table_rejects_unknown_keys():
    with pytest.raises(PlotDataError, match="unknown keys"):
        generation_table([{"prompt": "x", "response": "y"}])
    with pytest.raises(PlotDataError, match="incomplete"):
        generation_table([{"unpruned": "y"}])


def test_summary_table_outcomes_and_values():
    claims = [
        ClaimResult("Compact", "harmful NLL", 4.123456789, 1.3, True, EVIL),
        {"claim": "Unified", "metric": "transfer", "harm_set_value": np.float32(0.5),
         "control_value": "n/a", "held": False},
        {"claim": "Knowledge survives", "metric": "NLL after fine-tuning", "held": None},
    ]  # fmt: skip
    source = summary_table(claims)
    parsed = ParsedHTML(source)
    assert parsed.count("script") == 0
    assert parsed.count("tr") == 4
    cells = [attrs.get("class") for tag, attrs in parsed.tags if tag == "td"]
    assert cells.count("hc-held") == 1
    assert cells.count("hc-not-held") == 1
    assert cells.count("hc-untested") == 1
    text = "".join(parsed.text)
    assert "4.12346" in text
    assert "0.5" in text
    assert EVIL in text
    assert "not tested" in text


def test_html_table_escapes_and_checks_lengths():
    source = html_table(["name", EVIL], [[EVIL, 1.0 / 3], [None, 7]])
    parsed = ParsedHTML(source)
    assert parsed.count("script") == 0
    assert "0.333333" in "".join(parsed.text)
    assert "".join(parsed.text).count(EVIL) == 2
    numeric = [attrs.get("class") for tag, attrs in parsed.tags if tag == "td"]
    assert numeric == [None, "hc-number", None, "hc-number"]
    with pytest.raises(PlotDataError, match="has 1 cells"):
        html_table(["a", "b"], [["x"]])


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
))  # fmt: skip
def test_script_safe_json_round_trips(value):
    for ensure_ascii in (True, False):
        escaped = script_safe_json(json.dumps(value, ensure_ascii=ensure_ascii))
        assert json.loads(escaped) == value
        assert "<" not in escaped
        assert ">" not in escaped
        assert "&" not in escaped
        assert "\u2028" not in escaped


def test_format_number_and_plotly_text():
    assert format_number(None) == "n/a"
    assert format_number(float("nan")) == "n/a"
    assert format_number(3) == "3"
    assert format_number(0.1234567891) == "0.123457"
    assert format_number(2.5e-6, ".2g") == "2.5e-06"
    assert plotly_text("a<b>\nc & d") == "a&lt;b&gt;<br>c &amp; d"
