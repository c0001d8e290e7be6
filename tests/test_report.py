"""Tests for harmcircuit.report: self-contained, escaped, atomically written HTML reports."""

import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import plotly.graph_objects as go
import plotly.offline
import pytest

import harmcircuit.report as report_module
from harmcircuit.plots import (
    attention_view,
    generation_table,
    head_attribution,
    summary_table,
)
from harmcircuit.report import Report, ReportError, render_text

EVIL = "</script><script>alert(1)</script>"
PLOTLY_HEADER = "* plotly.js v"


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


def hostile_figure() -> go.Figure:
    fig = go.Figure(
        go.Scatter(x=[1, 2], y=[3, 4], hovertext=[EVIL, "fine"], hoverinfo="text", name=EVIL)
    )
    fig.update_layout(title=EVIL)
    return fig


def tokens_and_pattern():
    tokens = ["<|im_start|>", "user", EVIL, "?"]
    pattern = np.tril(np.ones((2, 4, 4)))
    return tokens, pattern / pattern.sum(axis=-1, keepdims=True)


def build_report() -> Report:
    report = Report(
        f"Run {EVIL}",
        metadata={
            "model": "smollm2-135m-instruct",
            "data_hashes": {"harmful": "sha256:0f3a", "benign": EVIL},
            "versions": {"torch": "2.13.0", "plotly": "7.1.0"},
            "seeds": [0, 1],
        },
    )
    report.add_text("Summary", f"Pruning **few** weights.\n\n- prompt: {EVIL}\n- `code {EVIL}`")
    report.add_figure("Hostile figure", hostile_figure(), caption=f"caption {EVIL}")
    report.add_figure("Heads", head_attribution(np.eye(3) - 0.5, "Head attribution"))
    tokens, pattern = tokens_and_pattern()
    report.add_html("Attention", attention_view(tokens, pattern, ["L0H0", "L0H1"]), "after view")
    report.add_html(
        "Generations",
        generation_table([{"prompt": EVIL, "unpruned": EVIL, "harm_set": "I can't."}]),
    )
    report.add_html("Claims", summary_table([{"claim": "Compact", "metric": EVIL, "held": True}]))
    report.add_table("Numbers", ["name", "value"], [[EVIL, 0.123456789], ["n", 7]])
    return report


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    build_report().write(path)
    text = path.read_text(encoding="utf-8")
    return path, text, ParsedHTML(text)


def test_report_has_no_external_references(written):
    _, text, parsed = written
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "action", "srcset", "data", "poster"):
            value = attrs.get(name)
            if value is not None:
                assert not re.match(r"\s*(https?:)?//", value), (tag, name, value)
        if tag == "script":
            assert "src" not in attrs
        if tag == "link":
            pytest.fail(f"report links an external resource: {attrs}")
    # The inlined plotly.js bundle contains link strings for map tiles and the plotly logo
    # (turned off with displaylogo), which load nothing for these figures. The rest has none.
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", own_text(text, parsed))
    # Every link is an in-page anchor to a section that exists.
    ids = {attrs.get("id") for _, attrs in parsed.tags}
    hrefs = [attrs["href"] for tag, attrs in parsed.tags if tag == "a" and "href" in attrs]
    assert len(hrefs) == 8
    for href in hrefs:
        assert href.startswith("#")
        assert href[1:] in ids


def own_text(text: str, parsed: ParsedHTML) -> str:
    """Return the report text without the inlined plotly.js and circuitsvis library code."""
    outside = text.replace(plotly.offline.get_plotlyjs(), "")
    for script in parsed.scripts:
        if "CircuitsVis.render(" in script:
            outside = outside.replace(script.split("CircuitsVis.render(")[0], "")
    return outside


def test_report_mentions_no_cdn_outside_bundles(written):
    _, text, parsed = written
    plotly_scripts = [script for script in parsed.scripts if PLOTLY_HEADER in script]
    assert len(plotly_scripts) == 1
    outside = own_text(text, parsed)
    assert len(outside) < 100_000
    assert "cdn" not in outside.lower()
    assert "unpkg" not in text
    assert "sourceMappingURL" not in outside


def test_report_embeds_plotly_once(written):
    path, text, parsed = written
    assert text.count(PLOTLY_HEADER) == 1
    assert plotly.offline.get_plotlyjs() in text
    # 1 plotly.js bundle, 2 figures and 1 circuitsvis view.
    assert parsed.count("script") == 4
    circuitsvis_bundle = 1_500_000
    assert path.stat().st_size < len(plotly.offline.get_plotlyjs()) + circuitsvis_bundle + 200_000


def test_report_escapes_all_text(written):
    _, text, parsed = written
    assert "<script>alert(1)" not in text
    assert "alert(1)" in text
    assert parsed.count("b") == 0
    visible = "".join(parsed.text)
    # Title in <title> and <h1>, text section twice, caption, generation table twice,
    # claims table, plain table, metadata.
    assert visible.count(EVIL) == 10
    assert "few" in visible
    strong = [tag for tag, _ in parsed.tags if tag == "strong"]
    assert strong == ["strong"]


def test_report_figure_json_is_script_safe(written):
    _, _, parsed = written
    figure_scripts = [script for script in parsed.scripts if "Plotly.newPlot" in script]
    assert len(figure_scripts) == 2
    match = re.search(r"var figure = (\{.*\});\n  figure\.config", figure_scripts[0], re.DOTALL)
    assert match is not None
    figure = json.loads(match.group(1))
    assert figure["data"][0]["hovertext"] == [EVIL, "fine"]
    assert figure["data"][0]["name"] == EVIL
    assert figure["layout"]["title"]["text"] == EVIL
    assert "<" not in match.group(1)


def test_report_metadata_section(written):
    _, _, parsed = written
    visible = "".join(parsed.text)
    assert "Run metadata" in visible
    assert "data_hashes.harmful" in visible
    assert "sha256:0f3a" in visible
    assert "versions.torch" in visible
    assert "2.13.0" in visible
    assert "[0, 1]" in visible
    assert "report.plotly_js_version" in visible
    assert plotly.offline.get_plotlyjs_version() in visible


def test_report_sections_in_order(written):
    _, _, parsed = written
    headings = [data for data in parsed.text if data.strip()]
    order = ["Summary", "Hostile figure", "Heads", "Attention", "Generations", "Claims"]
    positions = [headings.index(name) for name in order]
    assert positions == sorted(positions)
    # The caption after the circuitsvis view stays outside its mount point.
    caption_index = headings.index("after view")
    assert caption_index > positions[3]


def test_report_without_figures_skips_plotly(tmp_path):
    report = Report("Text only")
    report.add_text("Note", "plain")
    text = report.write(tmp_path / "r.html").read_text(encoding="utf-8")
    assert PLOTLY_HEADER not in text
    assert len(text) < 20_000


def test_report_write_is_atomic_on_error(tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("previous report", encoding="utf-8")

    calls = []

    def failing_figure_html(fig, element_id):
        calls.append(element_id)
        if len(calls) == 2:
            raise RuntimeError("simulated failure while writing")
        return "<div></div>"

    monkeypatch.setattr(report_module, "figure_html", failing_figure_html)
    report = build_report()
    with pytest.raises(RuntimeError, match="simulated failure"):
        report.write(target)

    assert len(calls) == 2  # plotly.js and the first figure were already written
    assert target.read_text(encoding="utf-8") == "previous report"
    assert sorted(os.listdir(target.parent)) == ["report.html"]


def test_report_write_leaves_nothing_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.html"

    def failing_replace(source, destination):
        raise OSError("simulated rename failure")

    monkeypatch.setattr(report_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated rename failure"):
        Report("r").write(target)
    assert os.listdir(tmp_path) == []


def test_report_write_creates_readable_file(tmp_path):
    path = Report("r").write(tmp_path / "nested" / "report.html")
    assert path.exists()
    assert path.stat().st_mode & 0o777 == 0o644
    assert [name for name in os.listdir(path.parent)] == ["report.html"]


def test_report_rejects_bad_input():
    report = Report("r")
    # Under pytest the annotations reject it first (a TypeError); otherwise ReportError does.
    with pytest.raises((ReportError, TypeError), match="Figure"):
        report.add_figure("x", {"data": []})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has 1 cells"):
        report.add_table("x", ["a", "b"], [["only one"]])


def test_render_text_markdown_subset():
    html = render_text(
        "### Result\nFirst *line*\ncontinues **here**.\n\n- one `a<b`\n- two [link](http://x.org)"
    )
    assert html == (
        "<h3>Result</h3>\n<p>First <em>line</em> continues <strong>here</strong>.</p>\n"
        "<ul><li>one <code>a&lt;b</code></li><li>two [link](http://x.org)</li></ul>"
    )


def test_render_text_escapes_html():
    html = render_text(f"{EVIL} **{EVIL}** `{EVIL}`")
    parsed = ParsedHTML(html)
    assert parsed.count("script") == 0
    assert "".join(parsed.text) == f"{EVIL} {EVIL} {EVIL}"
