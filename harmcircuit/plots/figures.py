"""Plotly figures for pruning results: pruning curves, matrices, weight locations, attribution.

Every function takes plain data (numpy arrays, lists, dicts) and returns a ``go.Figure`` in the
harmcircuit theme. Hover text shows each number with six significant digits, and any text that
comes from data is escaped so that plotly shows it literally.
"""

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Real
from plotly.subplots import make_subplots

from harmcircuit.plots.common import (
    DIVERGING_COLORSCALE,
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    SEQUENTIAL_COLORSCALE,
    THEME,
    PlotDataError,
    condition_color,
    format_number,
    plotly_text,
)

logger = logging.getLogger(__name__)

UNPRUNED = "unpruned"
# Conditions drawn first, in this order. Other conditions follow in order of first appearance.
CONDITION_ORDER = ("harm set", "random control")
FRACTION_AXIS_TITLE = "fraction of scored weights pruned"


def _metric_labels(metrics: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(metrics, Mapping):
        labels = {str(name): str(label) for name, label in metrics.items()}
    else:
        labels = {str(name): str(name) for name in metrics}
    if not labels:
        raise PlotDataError("metrics is empty: pass at least one metric name present in the rows")
    return labels


def _checked_row(row: Mapping[str, Any], index: int) -> tuple[str, float, int]:
    missing = [key for key in ("condition", "fraction", "n_weights") if key not in row]
    if missing:
        raise PlotDataError(f"pruning row {index} lacks keys {missing}: every row needs them")
    condition = str(row["condition"])
    fraction = float(row["fraction"])
    n_weights = int(row["n_weights"])
    if condition != UNPRUNED and not fraction > 0:
        raise PlotDataError(
            f"pruning row {index} ({condition!r}) has fraction {fraction}: pruned conditions need "
            f"a fraction > 0 for the log axis; label the unpruned model {UNPRUNED!r}"
        )
    return condition, fraction, n_weights


def _checked_metric(
    entry: Any, metric: str, index: int
) -> tuple[float, float | None, float | None]:
    if not isinstance(entry, Mapping) or "value" not in entry:
        raise PlotDataError(
            f"metric {metric!r} in pruning row {index} is {entry!r}: expected a dict with "
            "'value' and optional 'low', 'high' (confidence interval bounds)"
        )
    low = entry.get("low")
    high = entry.get("high")
    return (
        float(entry["value"]),
        None if low is None else float(low),
        None if high is None else float(high),
    )


def _interval_text(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "no confidence interval"
    return f"CI [{format_number(low)}, {format_number(high)}]"


def _fraction_text(fraction: float, n_weights: int) -> str:
    return f"{format_number(fraction, '.4g')} ({format_number(100 * fraction, '.4g')}%), " + (
        f"{n_weights:,} weights"
    )


def pruning_curves(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | Mapping[str, str],
    *,
    title: str = "Effect of pruning: harm set against random control",
    columns: int = 3,
) -> go.Figure:
    """Plot each metric against the fraction of scored weights pruned, one subplot per metric.

    Args:
        rows: one dict per evaluated model: ``condition`` (``"harm set"``, ``"random control"``,
            ``"unpruned"`` or any other name), ``fraction`` (fraction of scored weights pruned,
            > 0 except for ``"unpruned"``), ``n_weights`` (number of weights pruned), and for
            each metric name a dict ``{"value", "low", "high"}`` with the point estimate and its
            bootstrap confidence interval bounds (``low``/``high`` may be ``None``). A row may
            omit a metric that was not evaluated for it.
        metrics: metric names to plot, in subplot order, or a mapping from metric name to axis
            label (for example ``{"harmful_nll": "harmful-response NLL (nats/token)"}``).
        title: figure title.
        columns: maximum number of subplots per row.

    Returns:
        A figure with one log-x subplot per metric. Each pruned condition is one line with
        error bars (``low``/``high``), and the ``"unpruned"`` value is a dashed horizontal line
        across the range of pruned fractions in all rows, with its interval as a shaded band.
        Each subplot has one trace per pruned condition that has the metric, plus one for the
        unpruned line when the unpruned row has the metric.
    """
    labels = _metric_labels(metrics)
    if columns < 1:
        raise PlotDataError(f"columns is {columns}: pass a positive number of subplots per row")

    checked = [(_checked_row(row, index), row) for index, row in enumerate(rows)]
    all_fractions = [fraction for (cond, fraction, _), _ in checked if cond != UNPRUNED]
    if not all_fractions:
        raise PlotDataError(
            f"rows has no pruned condition: pass rows other than {UNPRUNED!r} to plot"
        )
    # Every unpruned line spans the same fractions, so the subplots line up.
    x_range = [min(all_fractions), max(all_fractions)]

    appearance = [cond for (cond, _, _), _ in checked if cond != UNPRUNED]
    conditions = [c for c in CONDITION_ORDER if c in appearance]
    conditions += [c for c in dict.fromkeys(appearance) if c not in conditions]

    n_metrics = len(labels)
    n_cols = min(columns, n_metrics)
    n_rows = math.ceil(n_metrics / n_cols)
    specs: list[list[dict | None]] = [
        [{} if r * n_cols + c < n_metrics else None for c in range(n_cols)] for r in range(n_rows)
    ]
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        specs=specs,
        subplot_titles=[plotly_text(label) for label in labels.values()],
        horizontal_spacing=0.08,
        vertical_spacing=0.18 if n_rows > 1 else 0.1,
    )

    extra_colors: list[str] = []
    legend_shown: set[str] = set()
    for metric_index, (metric, label) in enumerate(labels.items()):
        subplot = {"row": metric_index // n_cols + 1, "col": metric_index % n_cols + 1}
        unpruned: list[tuple[float, float | None, float | None]] = []
        has_pruned = False

        for condition in conditions:
            points: dict[float, tuple[int, float, float | None, float | None]] = {}
            for index, ((cond, fraction, n_weights), row) in enumerate(checked):
                if cond != condition or metric not in row:
                    continue
                if fraction in points:
                    raise PlotDataError(
                        f"condition {condition!r} has two rows at fraction {fraction} for metric "
                        f"{metric!r}: aggregate repeated seeds into one value and interval first"
                    )
                points[fraction] = (n_weights, *_checked_metric(row[metric], metric, index))
            if not points:
                continue

            fractions = sorted(points)
            has_pruned = True
            values = [points[f][1] for f in fractions]
            lows = [points[f][2] for f in fractions]
            highs = [points[f][3] for f in fractions]
            # Error bars cannot be negative, but a percentile bootstrap interval can exclude the
            # point estimate. The bar is then clipped at the estimate and the hover shows the CI.
            plus = [
                0.0 if h is None else max(0.0, h - v) for v, h in zip(values, highs, strict=True)
            ]
            minus = [
                0.0 if lo is None else max(0.0, v - lo) for v, lo in zip(values, lows, strict=True)
            ]
            hover = [
                f"<b>{plotly_text(condition)}</b><br>"
                f"pruned: {_fraction_text(f, points[f][0])}<br>"
                f"{plotly_text(label)}: {format_number(points[f][1])}<br>"
                f"{_interval_text(points[f][2], points[f][3])}"
                for f in fractions
            ]
            color = condition_color(condition, extra_colors)
            fig.add_trace(
                go.Scatter(
                    x=fractions,
                    y=values,
                    mode="lines+markers",
                    name=plotly_text(condition),
                    legendgroup=condition,
                    showlegend=condition not in legend_shown,
                    line={"color": color, "width": 2},
                    marker={"color": color, "size": 7},
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": plus,
                        "arrayminus": minus,
                        "color": color,
                        "thickness": 1.2,
                    },
                    hovertext=hover,
                    hoverinfo="text",
                ),
                **subplot,
            )
            legend_shown.add(condition)

        for index, ((cond, _, _), row) in enumerate(checked):
            if cond == UNPRUNED and metric in row:
                unpruned.append(_checked_metric(row[metric], metric, index))
        if not has_pruned and not unpruned:
            raise PlotDataError(f"no row reports metric {metric!r}: drop it from metrics")
        if len(unpruned) > 1:
            raise PlotDataError(
                f"metric {metric!r} has {len(unpruned)} unpruned rows: pass exactly one"
            )
        if unpruned:
            value, low, high = unpruned[0]
            hover_text = (
                f"<b>{UNPRUNED}</b><br>{plotly_text(label)}: {format_number(value)}<br>"
                f"{_interval_text(low, high)}"
            )
            fig.add_trace(
                go.Scatter(
                    x=x_range,
                    y=[value, value],
                    mode="lines",
                    name=UNPRUNED,
                    legendgroup=UNPRUNED,
                    showlegend=UNPRUNED not in legend_shown,
                    line={"color": condition_color(UNPRUNED, extra_colors), "dash": "dash"},
                    hovertext=[hover_text, hover_text],
                    hoverinfo="text",
                ),
                **subplot,
            )
            legend_shown.add(UNPRUNED)
            if low is not None and high is not None:
                fig.add_hrect(
                    y0=low, y1=high, fillcolor="#888888", opacity=0.15, line_width=0, **subplot
                )

        fig.update_yaxes(title_text=plotly_text(label), **subplot)

    fig.update_xaxes(type="log", exponentformat="power", title_text=FRACTION_AXIS_TITLE)
    fig.update_layout(
        template=THEME,
        title=plotly_text(title),
        height=340 * n_rows + 120,
        legend_title_text="condition",
    )
    return fig


def matrix_heatmap(
    values: Float[np.ndarray, "n_rows n_cols"],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    *,
    value_format: str = ".2f",
    colorscale: str | list = SEQUENTIAL_COLORSCALE,
    zmid: float | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    annotation: Sequence[Sequence[str]] | None = None,
    hover_annotation: Sequence[Sequence[str]] | None = None,
    row_title: str = "",
    col_title: str = "",
    colorbar_title: str = "",
) -> go.Figure:
    """Draw a labelled matrix as a heatmap with its values written in the cells.

    Used for the cross-category transfer matrix (rows: the category the weight set was found
    on, columns: the category evaluated) and the Jaccard overlap matrix. Row 0 is at the top.

    Args:
        values: the matrix; NaN cells are drawn empty and written ``"n/a"``.
        row_labels, col_labels: one label per row and column.
        value_format: format spec for the value written in each cell.
        colorscale, zmid, zmin, zmax: plotly colour settings; pass ``zmid=0`` with a diverging
            scale for signed values.
        annotation: optional short text per cell, written under the value and shown on hover.
        hover_annotation: optional longer text per cell for the hover label only; defaults to
            ``annotation``. Both are plain text, and newlines in them become line breaks.
        row_title, col_title, colorbar_title: axis and colour bar titles.
    """
    matrix = np.asarray(values, dtype=float)
    n_rows, n_cols = matrix.shape
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise PlotDataError(
            f"labels have lengths {len(row_labels)} x {len(col_labels)} but values has shape "
            f"{matrix.shape}: pass one label per row and per column"
        )
    for axis, labels in (("row_labels", row_labels), ("col_labels", col_labels)):
        if len(set(labels)) != len(labels):
            raise PlotDataError(f"{axis} has duplicates: plotly would merge those rows or columns")
    for name, grid in (("annotation", annotation), ("hover_annotation", hover_annotation)):
        if grid is not None and (len(grid) != n_rows or any(len(r) != n_cols for r in grid)):
            raise PlotDataError(f"{name} must have the shape of values, {matrix.shape}")
    if hover_annotation is None:
        hover_annotation = annotation

    row_names = [plotly_text(label) for label in row_labels]
    col_names = [plotly_text(label) for label in col_labels]
    row_heading = plotly_text(row_title or "row")
    col_heading = plotly_text(col_title or "column")

    cell_text: list[list[str]] = []
    hover_text: list[list[str]] = []
    for i in range(n_rows):
        cell_row, hover_row = [], []
        for j in range(n_cols):
            value = matrix[i, j]
            cell = format_number(value, value_format)
            hover = (
                f"{row_heading}: {row_names[i]}<br>{col_heading}: {col_names[j]}<br>"
                f"value: {format_number(value)}"
            )
            if annotation is not None:
                cell += f"<br>{plotly_text(annotation[i][j])}"
            if hover_annotation is not None:
                hover += f"<br>{plotly_text(hover_annotation[i][j])}"
            cell_row.append(cell)
            hover_row.append(hover)
        cell_text.append(cell_row)
        hover_text.append(hover_row)

    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=col_names,
            y=row_names,
            text=cell_text,
            texttemplate="%{text}",
            hovertext=hover_text,
            hoverinfo="text",
            colorscale=colorscale,
            zmid=zmid,
            zmin=zmin,
            zmax=zmax,
            colorbar={"title": {"text": plotly_text(colorbar_title)}},
            xgap=1,
            ygap=1,
        )
    )
    fig.update_xaxes(title_text=plotly_text(col_title), side="bottom", type="category")
    fig.update_yaxes(title_text=plotly_text(row_title), autorange="reversed", type="category")
    side = max(n_rows, n_cols)
    fig.update_layout(
        template=THEME,
        title=plotly_text(title),
        height=min(1400, 260 + 70 * side),
        width=min(1600, 420 + 100 * side),
    )
    return fig


def overlap_heatmap(
    jaccard: Float[np.ndarray, "n n"],
    expected: float | Float[np.ndarray, "n n"],
    labels: Sequence[str],
    *,
    title: str = "Overlap of per-category harm sets (Jaccard index)",
) -> go.Figure:
    """Draw observed Jaccard overlaps of per-category weight sets beside their random expectation.

    Args:
        jaccard: observed Jaccard index |A ∩ B| / |A ∪ B| for each pair of categories.
        expected: the Jaccard index expected for random sets of the same sizes, one number for
            all pairs or one per pair (for sets of sizes a and b among N weights, about
            ab/N / (a + b - ab/N)).
        labels: category names, one per row and column.

    Each cell shows the observed index and, below it, the random expectation; the hover label
    adds their ratio (observed / expected).
    """
    observed = np.asarray(jaccard, dtype=float)
    baseline = np.broadcast_to(np.asarray(expected, dtype=float), observed.shape)
    finite = observed[np.isfinite(observed)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise PlotDataError(
            f"jaccard has values in [{finite.min()}, {finite.max()}]: "
            "a Jaccard index lies in [0, 1]"
        )

    annotation = [[f"random {format_number(e, '.2g')}" for e in row] for row in baseline]
    hover = []
    for obs_row, exp_row in zip(observed, baseline, strict=True):
        hover_row = []
        for obs, exp in zip(obs_row, exp_row, strict=True):
            ratio = obs / exp if exp > 0 else float("nan")
            hover_row.append(
                f"random expectation: {format_number(exp)}\n"
                f"observed / expected: {format_number(ratio, '.4g')}"
            )
        hover.append(hover_row)

    return matrix_heatmap(
        observed,
        labels,
        labels,
        title,
        value_format=".2f",
        colorscale=SEQUENTIAL_COLORSCALE,
        zmin=0.0,
        zmax=1.0,
        annotation=annotation,
        hover_annotation=hover,
        row_title="harm set found on",
        col_title="harm set found on",
        colorbar_title="Jaccard",
    )


def weight_locations(
    counts: Real[np.ndarray, "n_layers n_types"],
    matrix_types: Sequence[str],
    *,
    matrix_sizes: Real[np.ndarray, "n_layers n_types"] | None = None,
    title: str = "Where the pruned weights sit",
) -> go.Figure:
    """Show how many pruned weights sit in each layer and matrix type.

    Args:
        counts: number of pruned weights in each (layer, matrix type), for example matrix types
            ``["q", "k", "v", "o", "gate", "up", "down"]``.
        matrix_types: one name per column of ``counts``.
        matrix_sizes: optional number of scored weights in each (layer, matrix type). When
            given, the hover text also shows the fraction of that matrix that was pruned.

    Returns:
        Two subplots sharing the matrix-type axis: a bar of totals per matrix type on top
        (trace 0) and a layer x matrix-type heatmap of counts below (trace 1), layer 0 on top.
    """
    grid = np.asarray(counts, dtype=float)
    n_layers, n_types = grid.shape
    if len(matrix_types) != n_types:
        raise PlotDataError(
            f"matrix_types has {len(matrix_types)} names but counts has {n_types} columns"
        )
    if np.any(grid < 0):
        raise PlotDataError("counts has negative entries: pass the number of pruned weights")
    sizes = None if matrix_sizes is None else np.asarray(matrix_sizes, dtype=float)
    if sizes is not None and sizes.shape != grid.shape:
        raise PlotDataError(f"matrix_sizes has shape {sizes.shape}, counts has {grid.shape}")

    types = [plotly_text(name) for name in matrix_types]
    layers = [str(layer) for layer in range(n_layers)]
    total = grid.sum()
    totals = grid.sum(axis=0)

    def share(count: float) -> str:
        return format_number(100 * count / total, ".4g") + "% of the set" if total else "empty set"

    hover = []
    for layer in range(n_layers):
        hover_row = []
        for t in range(n_types):
            text = (
                f"layer {layer}, {types[t]}<br>pruned weights: {format_number(grid[layer, t])}"
                f"<br>{share(grid[layer, t])}"
            )
            if sizes is not None and sizes[layer, t] > 0:
                fraction = grid[layer, t] / sizes[layer, t]
                text += f"<br>fraction of this matrix pruned: {format_number(fraction, '.4g')}"
            hover_row.append(text)
        hover.append(hover_row)
    bar_hover = [
        f"{name}, all layers<br>pruned weights: {format_number(type_total)}<br>{share(type_total)}"
        for name, type_total in zip(types, totals, strict=True)
    ]

    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.25, 0.75], vertical_spacing=0.04
    )
    fig.add_trace(
        go.Bar(
            x=types,
            y=totals,
            marker_color=POSITIVE_COLOR,
            hovertext=bar_hover,
            hoverinfo="text",
            name="total per matrix type",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Heatmap(
            z=grid,
            x=types,
            y=layers,
            colorscale=SEQUENTIAL_COLORSCALE,
            zmin=0,
            hovertext=hover,
            hoverinfo="text",
            colorbar={"title": {"text": "pruned weights"}, "len": 0.72, "y": 0.37},
            xgap=1,
            ygap=1,
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="pruned weights", row=1, col=1)
    fig.update_yaxes(title_text="layer", autorange="reversed", type="category", row=2, col=1)
    fig.update_xaxes(title_text="matrix type", type="category", row=2, col=1)
    fig.update_layout(
        template=THEME, title=plotly_text(title), height=min(1600, 420 + 22 * n_layers)
    )
    return fig


def head_attribution(
    scores: Float[np.ndarray, "n_layers n_heads"],
    title: str,
    *,
    colorbar_title: str = "score",
) -> go.Figure:
    """Draw per-head scores as a layer x head heatmap on a diverging scale centred at 0.

    The colour range is symmetric (±max |score|): blue cells are positive, red cells negative.
    What the sign means (for example, the estimated change in harmful-response loss when the
    head is ablated) is set by the caller's score and belongs in ``title``/``colorbar_title``.
    """
    grid = np.asarray(scores, dtype=float)
    n_layers, n_heads = grid.shape
    finite = np.abs(grid[np.isfinite(grid)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0

    hover = [
        [f"L{layer}H{head}<br>score: {format_number(grid[layer, head])}" for head in range(n_heads)]
        for layer in range(n_layers)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=grid,
            x=[str(head) for head in range(n_heads)],
            y=[str(layer) for layer in range(n_layers)],
            colorscale=DIVERGING_COLORSCALE,
            zmid=0.0,
            zmin=-limit,
            zmax=limit,
            hovertext=hover,
            hoverinfo="text",
            colorbar={"title": {"text": plotly_text(colorbar_title)}},
            xgap=1,
            ygap=1,
        )
    )
    fig.update_xaxes(title_text="head", type="category")
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    fig.update_layout(
        template=THEME,
        title=plotly_text(title),
        height=min(1600, 240 + 20 * n_layers),
        width=min(1400, 380 + 36 * n_heads),
    )
    return fig


def top_neurons(
    scores: Float[np.ndarray, "n_layers d_mlp"],
    k: int = 20,
    *,
    title: str = "MLP neurons with the largest |score|",
    score_label: str = "score",
) -> go.Figure:
    """Draw the ``k`` MLP neurons with the largest absolute score as a horizontal bar chart.

    Bars are labelled ``L{layer}.N{index}`` and sorted by |score|, largest at the top. Ties keep
    the lower (layer, index) first and NaN scores are skipped. Blue bars are positive, red
    negative, as in ``head_attribution``.
    """
    if k < 1:
        raise PlotDataError(f"k is {k}: pass the number of neurons to show, at least 1")
    grid = np.asarray(scores, dtype=float)
    d_mlp = grid.shape[1]
    flat = grid.reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")  # NaN sorts last
    top = [int(i) for i in order if np.isfinite(flat[i])][:k]

    names = [f"L{i // d_mlp}.N{i % d_mlp}" for i in top]
    values = [float(flat[i]) for i in top]
    fig = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker_color=[POSITIVE_COLOR if v >= 0 else NEGATIVE_COLOR for v in values],
            hovertext=[
                f"{name}<br>{plotly_text(score_label)}: {format_number(value)}"
                for name, value in zip(names, values, strict=True)
            ],
            hoverinfo="text",
        )
    )
    fig.update_xaxes(title_text=plotly_text(score_label), zeroline=True)
    fig.update_yaxes(title_text="neuron (layer.index)", autorange="reversed", type="category")
    fig.update_layout(
        template=THEME, title=plotly_text(title), height=200 + 22 * len(names), bargap=0.25
    )
    return fig
