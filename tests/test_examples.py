"""Execute the example notebooks end to end on the real embedded model."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KERNEL_NAME = "python3"
# Per cell: generous, so that only a hung kernel fails the test by time.
# NOTE: the whole test took 250 to 420 s on a 2-core machine shared with other jobs (load
# average 6 to 8); its time on an idle machine was not measured.
CELL_TIMEOUT_S = 600

# Appended to the executed copy only: it saves the harmful continuations to a file so the test
# can check that no cell printed them, without showing them in any output itself.
RECORD_HARMFUL_CELL = """
import json as _json
from pathlib import Path as _Path

_Path("harmful_continuations.json").write_text(_json.dumps(continuations))
"""


def write_kernel_spec(folder: Path) -> None:
    """Write a ``python3`` kernel spec that starts ipykernel in this interpreter (the venv's).

    ``JUPYTER_PATH`` puts it ahead of any user-wide ``python3`` spec, and nothing is
    registered outside ``folder``.
    """
    spec_folder = folder / "kernels" / KERNEL_NAME
    spec_folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "harmcircuit test kernel",
        "language": "python",
    }
    (spec_folder / "kernel.json").write_text(json.dumps(spec))


def output_texts(cell: nbformat.NotebookNode) -> list[str]:
    """Return the text of every stream, plain-text and HTML output of a cell."""
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(output.get("text", ""))
        for key in ("text/plain", "text/html"):
            value = output.get("data", {}).get(key)
            if value:
                texts.append(value if isinstance(value, str) else "".join(value))
    return texts


def output_types(cell: nbformat.NotebookNode) -> set[str]:
    return {key for output in cell.get("outputs", []) for key in output.get("data", {})}


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] for cell in code_cells)
    assert all(cell.execution_count is None for cell in code_cells)


@pytest.mark.real_model
@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    jupyter_path = tmp_path / "jupyter"
    write_kernel_spec(jupyter_path)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    # The kernel inherits the environment: small sizes, and no hub access.
    monkeypatch.setenv("HARMCIRCUIT_EXAMPLE_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()

    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    n_cells = len(notebook.cells)
    notebook.cells.append(nbformat.v4.new_code_cell(RECORD_HARMFUL_CELL))
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(work)}},
    )
    # Raises CellExecutionError, naming the cell, when any cell fails.
    client.execute()

    cells = notebook.cells[:n_cells]
    code_cells = [cell for cell in cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    errors = [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert errors == []

    printed = "\n".join(text for cell in cells for text in output_texts(cell))
    assert "harm set" in printed
    assert "harmful NLL" in printed
    assert "complied" in printed

    # Two plotly figures: the head heatmap and the weight locations.
    plotly_type = "application/vnd.plotly.v1+json"
    figures = [cell for cell in code_cells if plotly_type in output_types(cell)]
    assert len(figures) == 2

    continuations = json.loads((work / "harmful_continuations.json").read_text())
    assert len(continuations) == 3  # 2 scoring and 1 held-out prompt in the small notebook
    leaked = [text.strip() for text in continuations if text.strip() and text.strip() in printed]
    assert len(leaked) == 0, f"{len(leaked)} harmful responses appear in the notebook's outputs"
