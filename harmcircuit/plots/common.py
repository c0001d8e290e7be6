"""Shared look, number formatting and escaping for harmcircuit figures and tables."""

import html
import logging
import math
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

logger = logging.getLogger(__name__)


class PlotDataError(ValueError):
    """Data handed to a figure or table function has the wrong shape, keys or values."""


# Fixed colours per pruning condition, so that a condition looks the same in every figure.
CONDITION_COLORS: dict[str, str] = {
    "harm set": "#c0392b",
    "random control": "#7f8c8d",
    "unpruned": "#222222",
    "benign set": "#2471a3",
    "refusal set": "#8e44ad",
}
# Colours for conditions without a fixed colour, taken in order of first appearance.
EXTRA_COLORS: tuple[str, ...] = ("#d68910", "#17a589", "#a04000", "#5b2c6f", "#1e8449", "#b03a2e")

# Diverging colour scale for signed scores: red below zero, white at zero, blue above.
DIVERGING_COLORSCALE = "RdBu"
SEQUENTIAL_COLORSCALE = "Blues"
POSITIVE_COLOR = "#2166ac"
NEGATIVE_COLOR = "#b2182b"

THEME = go.layout.Template(pio.templates["plotly_white"])
THEME.layout.font = {"family": "Helvetica, Arial, sans-serif", "size": 13, "color": "#222222"}
THEME.layout.title = {"x": 0.02, "xanchor": "left", "font": {"size": 17}}
THEME.layout.margin = {"l": 70, "r": 30, "t": 80, "b": 60}
THEME.layout.hoverlabel = {"align": "left", "font": {"family": "monospace", "size": 12}}


def condition_color(condition: str, seen: list[str]) -> str:
    """Return the colour of a pruning condition; ``seen`` orders conditions without a fixed one."""
    if condition in CONDITION_COLORS:
        return CONDITION_COLORS[condition]
    if condition not in seen:
        seen.append(condition)
    return EXTRA_COLORS[seen.index(condition) % len(EXTRA_COLORS)]


def format_number(value: Any, spec: str = ".6g") -> str:
    """Format a number for hover text and tables; ``None`` and NaN become ``"n/a"``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "n/a"
    return format(number, spec)


def plotly_text(text: Any) -> str:
    """Escape text for plotly titles, labels and hover text.

    Plotly draws a subset of HTML tags (``<b>``, ``<br>``, ``<a href>``) found in any text it
    shows, and decodes entities such as ``&lt;``. Escaping makes dataset text appear literally.
    Newlines become ``<br>``, plotly's line break.
    """
    return html.escape(str(text), quote=False).replace("\n", "<br>")


_SCRIPT_JSON_SWAPS = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def script_safe_json(json_text: str) -> str:
    """Escape JSON text so that it can sit inside an HTML ``<script>`` element.

    ``<``, ``>`` and ``&`` can only occur inside JSON strings, where the ``\\uXXXX`` forms decode
    to the same characters, so the value is unchanged while ``</script>`` and ``<!--`` can no
    longer end or alter the script element. Apply it only to JSON, not to arbitrary JavaScript.
    """
    for unsafe, safe in _SCRIPT_JSON_SWAPS:
        json_text = json_text.replace(unsafe, safe)
    return json_text
