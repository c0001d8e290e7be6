"""HTML tables for reports: generations before and after pruning, claim summaries, plain tables.

Every cell is escaped with ``html.escape``, so dataset and model text shows as text. The tables
use the CSS classes in ``TABLE_CSS``, which ``harmcircuit.report.Report`` includes.
"""

import dataclasses
import html
import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmcircuit.plots.common import PlotDataError, format_number

logger = logging.getLogger(__name__)

TABLE_CSS = """
table.hc-table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
table.hc-table th, table.hc-table td {
  border: 1px solid #d5d8dc; padding: 4px 8px; text-align: left; vertical-align: top;
}
table.hc-table th { background: #f2f4f4; }
table.hc-table td.hc-number { text-align: right; font-variant-numeric: tabular-nums; }
table.hc-generations td { max-width: 28em; }
table.hc-generations div.hc-text {
  white-space: pre-wrap; overflow-wrap: anywhere; max-height: 16em; overflow-y: auto;
  font-family: ui-monospace, monospace; font-size: 0.9em;
}
td.hc-held { color: #1e8449; font-weight: bold; }
td.hc-not-held { color: #b03a2e; font-weight: bold; }
td.hc-untested { color: #7f8c8d; }
span.hc-missing { color: #95a5a6; font-style: italic; }
"""


@dataclass(frozen=True)
class GenerationRow:
    """One prompt with the responses of the unpruned, harm-set-pruned and control models.

    ``verdicts`` contains judge outputs per condition (for example ``{"unpruned": "complied",
    "harm set": "refused"}``) or one summary string. A ``None`` response was not generated.
    """

    prompt: str
    unpruned: str | None = None
    harm_set: str | None = None
    random_control: str | None = None
    verdicts: Mapping[str, str] | str | None = None
    category: str | None = None


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of testing one claim: the metric on the harm set and on its control.

    ``held`` is ``True`` when the claim held, ``False`` when it did not and ``None`` when the
    run could not test it.
    """

    claim: str
    metric: str
    harm_set_value: float | numbers.Real | str | None = None
    control_value: float | numbers.Real | str | None = None
    held: bool | None = None
    note: str = ""


def _as_dataclass(cls: type, item: Any, index: int) -> Any:
    if isinstance(item, cls):
        return item
    if not isinstance(item, Mapping):
        raise PlotDataError(f"row {index} is {type(item).__name__}: pass a {cls.__name__} or dict")
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise PlotDataError(f"row {index} has unknown keys {unknown}: allowed keys are {allowed}")
    try:
        return cls(**item)
    except TypeError as error:
        raise PlotDataError(f"row {index} is incomplete for {cls.__name__}: {error}") from None


def format_cell(value: Any) -> str:
    """Return the escaped HTML text of a table cell; floats get six significant digits."""
    if value is None:
        return '<span class="hc-missing">n/a</span>'
    if _is_number(value) and not isinstance(value, numbers.Integral):
        return html.escape(format_number(value))
    return html.escape(str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, css_class: str = "hc-table"
) -> str:
    """Build an HTML table with every header and cell escaped; numeric cells align right."""
    for index, row in enumerate(rows):
        if len(row) != len(header):
            raise PlotDataError(
                f"table row {index} has {len(row)} cells but the header has {len(header)}"
            )
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="hc-number">{format_cell(cell)}</td>'
            if _is_number(cell)
            else f"<td>{format_cell(cell)}</td>"
            for cell in row
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<table class="{html.escape(css_class)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _text_cell(text: str | None, label: str | None = None) -> str:
    prefix = "" if label is None else f'<span class="hc-missing">{html.escape(label)}</span>'
    if text is None:
        return f'<td>{prefix}<span class="hc-missing">not generated</span></td>'
    return f'<td>{prefix}<div class="hc-text">{html.escape(text)}</div></td>'


def _verdict_cell(verdicts: Mapping[str, str] | str | None) -> str:
    if verdicts is None:
        return '<td><span class="hc-missing">not judged</span></td>'
    if isinstance(verdicts, str):
        return f"<td>{html.escape(verdicts)}</td>"
    lines = "<br>".join(
        f"{html.escape(str(condition))}: {html.escape(str(verdict))}"
        for condition, verdict in verdicts.items()
    )
    return f"<td>{lines}</td>"


def generation_table(rows: Sequence[GenerationRow | Mapping[str, Any]]) -> str:
    """Build an HTML table of generations before and after pruning.

    Columns: prompt (with its category when given), unpruned response, harm-set-pruned
    response, random-control response, verdicts. Rows are ``GenerationRow`` objects or dicts
    with the same keys. Every cell is escaped, and long responses scroll inside their cell.
    """
    items = [_as_dataclass(GenerationRow, row, index) for index, row in enumerate(rows)]
    header = (
        "<tr><th>prompt</th><th>unpruned response</th><th>harm-set-pruned response</th>"
        "<th>random-control response</th><th>verdicts</th></tr>"
    )
    body = []
    for item in items:
        cells = [
            _text_cell(item.prompt, item.category),
            _text_cell(item.unpruned),
            _text_cell(item.harm_set),
            _text_cell(item.random_control),
            _verdict_cell(item.verdicts),
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table class="hc-table hc-generations"><thead>{header}</thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def summary_table(claims: Sequence[ClaimResult | Mapping[str, Any]]) -> str:
    """Build an HTML table of claims: metric, harm-set value, control value, outcome, note.

    Rows are ``ClaimResult`` objects or dicts with the same keys. The outcome column reads
    "held", "not reproduced" or "not tested" (``held`` ``True``, ``False`` or ``None``).
    """
    items = [_as_dataclass(ClaimResult, claim, index) for index, claim in enumerate(claims)]
    header = (
        "<tr><th>claim</th><th>metric</th><th>harm set</th><th>compared with</th>"
        "<th>outcome</th><th>note</th></tr>"
    )
    outcomes = {True: ("hc-held", "held"), False: ("hc-not-held", "not reproduced")}
    body = []
    for item in items:
        css, outcome = outcomes.get(item.held, ("hc-untested", "not tested"))
        values = [
            f'<td class="hc-number">{format_cell(value)}</td>'
            if _is_number(value)
            else f"<td>{format_cell(value)}</td>"
            for value in (item.harm_set_value, item.control_value)
        ]
        body.append(
            f"<tr><td>{html.escape(item.claim)}</td><td>{html.escape(item.metric)}</td>"
            f'{"".join(values)}<td class="{css}">{outcome}</td>'
            f"<td>{html.escape(item.note)}</td></tr>"
        )
    return (
        f'<table class="hc-table hc-claims"><thead>{header}</thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
