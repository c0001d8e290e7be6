"""A self-contained HTML report: text, plotly figures, tables and circuitsvis views in one file.

The written file embeds plotly.js once, inline, and references no external URL, so it opens
offline. All text passed to ``add_text``, ``add_table``, headings, captions and metadata is
escaped; only ``add_html`` inserts HTML as given, for output of ``harmcircuit.plots``.
"""

import contextlib
import html
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from harmcircuit.plots import TABLE_CSS, html_table, script_safe_json

logger = logging.getLogger(__name__)

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

PAGE_CSS = """
body { font-family: Helvetica, Arial, sans-serif; color: #222; margin: 0 auto; max-width: 1500px;
  padding: 1em 2em 4em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.3em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d5d8dc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.1em; }
nav.hc-toc ol { columns: 2; padding-left: 1.5em; }
p.hc-caption { color: #555; font-size: 0.92em; margin-top: 0.3em; }
code { background: #f4f6f6; padding: 0 0.2em; border-radius: 3px; }
div.hc-figure { width: 100%; }
section { overflow-x: auto; }
"""


class ReportError(ValueError):
    """The report cannot be built from what was added to it."""


@dataclass(frozen=True)
class _Section:
    heading: str
    kind: str  # "text", "figure", "html" or "table"
    body: Any
    caption: str = ""


def _render_inline(text: str) -> str:
    """Escape one line and apply `code`, **bold** and *italic* markup outside code spans."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", escaped)
        out.append(escaped)
    return "".join(out)


def render_text(text: str) -> str:
    """Render plain text or a small markdown subset as escaped HTML.

    Blank lines separate paragraphs. A block whose lines all start with ``- `` or ``* `` becomes
    a bullet list, and a line starting with ``### `` a subheading. Inline ``code``, ``**bold**``
    and ``*italic*`` are recognised. Links and raw HTML are not, so they show as text.
    """
    blocks = re.split(r"\n\s*\n", text.strip())
    rendered = []
    for block in blocks:
        lines = [line.rstrip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        if all(re.match(r"\s*[-*] ", line) for line in lines):
            entries = [re.sub(r"^\s*[-*] ", "", line) for line in lines]
            items = "".join(f"<li>{_render_inline(entry)}</li>" for entry in entries)
            rendered.append(f"<ul>{items}</ul>")
            continue
        for line in lines:
            if line.startswith("### "):
                rendered.append(f"<h3>{_render_inline(line[4:])}</h3>")
                lines = lines[1:]
            else:
                break
        if lines:
            rendered.append(f"<p>{_render_inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(rendered)


def _flatten(metadata: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, prefix=f"{name}.")
        elif isinstance(value, list | tuple):
            items.append((name, json.dumps(value, default=str)))
        else:
            items.append((name, value))
    return items


def figure_html(fig: go.Figure, element_id: str) -> str:
    """Return a ``<div>`` and ``<script>`` that draw ``fig`` with an already loaded plotly.js.

    The figure JSON passes through ``script_safe_json``, so hover text or titles containing
    ``</script>`` cannot end the script element. Plotly 7.1's JSON encoder escapes ``<``, ``>``
    and ``/`` as well, but this function does not rely on it.
    """
    figure_json = script_safe_json(pio.to_json(fig, validate=False))
    config_json = script_safe_json(json.dumps(PLOTLY_CONFIG))
    return (
        f'<div id="{element_id}" class="hc-figure"></div>\n'
        "<script>\n"
        f"(function () {{\n  var figure = {figure_json};\n"
        f"  figure.config = {config_json};\n"
        f'  Plotly.newPlot("{element_id}", figure);\n}})();\n'
        "</script>"
    )


def _plotly_js() -> str:
    source = plotly.offline.get_plotlyjs()
    if "</script" in source.lower() or "<!--" in source:
        raise ReportError(
            "the plotly.js bundle contains '</script' or '<!--' and cannot be inlined safely; "
            "use a plotly release whose bundle does not"
        )
    return source


class Report:
    """An HTML report built section by section and written as one self-contained file.

    Each ``add_*`` call appends a section with an ``<h2>`` heading; the table of contents
    lists them in order, followed by the run metadata section.
    """

    def __init__(self, title: str, *, metadata: Mapping[str, Any] | None = None) -> None:
        self.title = title
        self.sections: list[_Section] = []
        self.metadata: dict[str, Any] = dict(metadata or {})

    def add_text(self, heading: str, text: str) -> None:
        """Append a section of plain text or simple markdown (see ``render_text``), escaped."""
        self.sections.append(_Section(heading, "text", text))

    def add_figure(self, heading: str, fig: go.Figure, caption: str = "") -> None:
        """Append a plotly figure; it is serialised when the report is written."""
        if not isinstance(fig, go.Figure):
            raise ReportError(f"add_figure got {type(fig).__name__}: pass a plotly go.Figure")
        self.sections.append(_Section(heading, "figure", fig, caption))

    def add_html(self, heading: str, trusted_html: str, caption: str = "") -> None:
        """Append HTML as given, unescaped.

        Only for HTML built by ``harmcircuit.plots`` (``attention_view``, ``generation_table``,
        ``summary_table``), which escapes the data inside it. Never pass raw dataset text here.
        """
        self.sections.append(_Section(heading, "html", trusted_html, caption))

    def add_table(
        self,
        heading: str,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        caption: str = "",
    ) -> None:
        """Append a table; every header and cell is escaped, floats get six significant digits."""
        table = html_table(header, rows)  # validates row lengths now, not at write time
        self.sections.append(_Section(heading, "table", table, caption))

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Add or replace run metadata entries (model, data hashes, seed, package versions)."""
        self.metadata.update(metadata)

    def _section_body(self, section: _Section, index: int) -> str:
        if section.kind == "text":
            return render_text(section.body)
        if section.kind == "figure":
            return figure_html(section.body, f"hc-figure-{index}")
        return str(section.body)

    def _chunks(self) -> Iterator[str]:
        """Yield the page in pieces, so that writing keeps no second copy of plotly.js in memory."""
        has_figures = any(section.kind == "figure" for section in self.sections)
        title = html.escape(self.title)
        yield (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n<style>{PAGE_CSS}{TABLE_CSS}</style>\n"
        )
        if has_figures:
            yield f"<script>\n{_plotly_js()}\n</script>\n"
        yield f"</head>\n<body>\n<h1>{title}</h1>\n"

        toc = [
            f'<li><a href="#hc-section-{index}">{html.escape(section.heading)}</a></li>'
            for index, section in enumerate(self.sections)
        ]
        toc.append('<li><a href="#hc-metadata">Run metadata</a></li>')
        yield f'<nav class="hc-toc"><h2>Contents</h2><ol>{"".join(toc)}</ol></nav>\n'

        for index, section in enumerate(self.sections):
            caption = (
                f'<p class="hc-caption">{html.escape(section.caption)}</p>'
                if section.caption
                else ""
            )
            yield (
                f'<section id="hc-section-{index}">\n<h2>{html.escape(section.heading)}</h2>\n'
                f"{self._section_body(section, index)}\n{caption}\n</section>\n"
            )

        rows = _flatten(self.metadata)
        if has_figures:
            rows.append(("report.plotly_js_version", plotly.offline.get_plotlyjs_version()))
        yield (
            '<section id="hc-metadata">\n<h2>Run metadata</h2>\n'
            f"{html_table(['key', 'value'], rows)}\n</section>\n</body>\n</html>\n"
        )

    def render(self) -> str:
        """Return the whole report as one HTML string."""
        return "".join(self._chunks())

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` atomically and return the path.

        The page goes to a temporary file in the same folder, which replaces ``path`` only
        once it is complete, so an interrupted write leaves any earlier report untouched and
        no partial file behind.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                for chunk in self._chunks():
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)  # mkstemp creates 0600; a report is meant to be shared
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        logger.info("wrote report %s (%d sections)", target, len(self.sections))
        return target
