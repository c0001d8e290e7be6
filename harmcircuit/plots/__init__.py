"""Plotly figures, offline circuitsvis views and HTML tables built from plain data.

Nothing here takes a model: the pipeline computes numbers and passes numpy arrays, lists and
dicts, and the report embeds what these functions return.
"""

from harmcircuit.plots.attention import attention_view
from harmcircuit.plots.common import (
    CONDITION_COLORS,
    THEME,
    PlotDataError,
    format_number,
    plotly_text,
    script_safe_json,
)
from harmcircuit.plots.figures import (
    head_attribution,
    matrix_heatmap,
    overlap_heatmap,
    pruning_curves,
    top_neurons,
    weight_locations,
)
from harmcircuit.plots.tables import (
    TABLE_CSS,
    ClaimResult,
    GenerationRow,
    format_cell,
    generation_table,
    html_table,
    summary_table,
)

__all__ = [
    "CONDITION_COLORS",
    "TABLE_CSS",
    "THEME",
    "ClaimResult",
    "GenerationRow",
    "PlotDataError",
    "attention_view",
    "format_cell",
    "format_number",
    "generation_table",
    "head_attribution",
    "html_table",
    "matrix_heatmap",
    "overlap_heatmap",
    "plotly_text",
    "pruning_curves",
    "script_safe_json",
    "summary_table",
    "top_neurons",
    "weight_locations",
]
