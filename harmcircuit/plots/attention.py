"""Offline circuitsvis attention views with script-safe props."""

import json
import logging
import re
from collections.abc import Sequence

import circuitsvis.attention
import numpy as np
from jaxtyping import Float

from harmcircuit.plots.common import PlotDataError, script_safe_json

logger = logging.getLogger(__name__)

# Attention probabilities are rounded to this many decimals before embedding. For 9 heads over
# 100 tokens of random causal float32 patterns, that shrinks the props from 1.2 MB to 0.6 MB.
PATTERN_DECIMALS = 5

# circuitsvis 1.43.3 `render_local` ends its HTML with
#   CircuitsVis.render("<id>", CircuitsVis.AttentionHeads, <props JSON>)\n    </script>
# The props are the last {...} before that closing parenthesis.
_PROPS_PATTERN = re.compile(
    r"(CircuitsVis\.AttentionHeads,\s*)(\{.*\})(\s*\)\s*</script>\s*)$", re.DOTALL
)
# It also opens its mount point as `<div id=... style=.../>`. HTML has no self-closing <div>,
# so without a fix the element would swallow whatever follows it, and React would then replace
# that content when it mounts.
_SOURCE_MAP_PATTERN = re.compile(r"^//# sourceMappingURL=\S*$", re.MULTILINE)
_MOUNT_PATTERN = re.compile(r'^\s*<div id="(circuits-vis-[0-9a-f-]+)" style="([^"]*)"\s*/>')


def attention_view(
    tokens: Sequence[str],
    pattern: Float[np.ndarray, "n_heads pos pos"],
    head_names: Sequence[str] | None = None,
) -> str:
    """Render circuitsvis's attention-heads view as HTML that works offline.

    Args:
        tokens: the token strings, one per position.
        pattern: attention probabilities ``[head, destination position, source position]``.
        head_names: one name per head (for example ``"L3H5"``); circuitsvis numbers the heads
            when omitted.

    Returns:
        A ``<div>`` and an inline ``<script type="module">`` that carries circuitsvis's bundled
        JavaScript (about 1.3 MB per view) and no network reference. Token text that contains
        ``</script>`` or HTML is shown as text. Embed it with ``Report.add_html``.
    """
    weights = np.asarray(pattern, dtype=float)
    n_heads, n_positions, _ = weights.shape
    if len(tokens) != n_positions:
        raise PlotDataError(
            f"pattern covers {n_positions} positions but {len(tokens)} tokens were given"
        )
    names = None if head_names is None else [str(name) for name in head_names]
    if names is not None and len(names) != n_heads:
        raise PlotDataError(f"head_names has {len(names)} names for {n_heads} heads in pattern")
    token_list = [str(token) for token in tokens]
    rounded = np.round(weights, PATTERN_DECIMALS)

    # `.local_src` inlines the JavaScript bundle, while str(view) and the notebook display load
    # it from a CDN.
    # NOTE: every view carries its own 1.3 MB copy of the bundle, because circuitsvis declares
    # it inside a module script, where it is not visible to other scripts on the page.
    source = circuitsvis.attention.attention_heads(
        attention=rounded, tokens=token_list, attention_head_names=names
    ).local_src

    match = _PROPS_PATTERN.search(source)
    if match is None:
        raise RuntimeError(
            "circuitsvis attention_heads output has an unexpected layout: the props could not "
            "be located for escaping; pin circuitsvis==1.43.3"
        )
    props = json.loads(match.group(2))
    if props.get("tokens") != token_list:
        raise RuntimeError("circuitsvis props located for escaping do not hold the given tokens")
    safe_props = script_safe_json(json.dumps(props))
    source = source[: match.start(2)] + safe_props + source[match.end(2) :]

    # The bundle ends with a source map comment; dropping it stops browser developer tools
    # from requesting iife.js.map next to the report.
    source = _SOURCE_MAP_PATTERN.sub("", source)

    mount = _MOUNT_PATTERN.match(source)
    if mount is None:
        raise RuntimeError(
            "circuitsvis attention_heads output does not start with its mount <div>; "
            "pin circuitsvis==1.43.3"
        )
    closed_div = f'<div id="{mount.group(1)}" style="{mount.group(2)}"></div>'
    return closed_div + source[mount.end() :]
