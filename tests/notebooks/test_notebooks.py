"""Every notebooks/*.ipynb executes top to bottom without an error, in under two minutes, and is committed
with its outputs cleared.

The notebooks run in a fresh Jupyter kernel (nbclient + ipykernel, pinned in requirements-dev.txt) whose
environment is this process's, with the gemma4 in use put first on PYTHONPATH; each runs in a temporary
working directory.
"""
import os
import time
from pathlib import Path

import pytest

# make test installs both (requirements-dev.txt); a GPU machine's environment may lack them
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

import gemma4

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 120


def _kernel_env() -> dict:
    env = dict(os.environ)
    package_root = str(Path(gemma4.__file__).resolve().parent.parent)  # the gemma4 this test imported
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no .ipynb file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIME_LIMIT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=_kernel_env())
    except nbclient.exceptions.CellExecutionError as e:  # the message holds the cell's traceback
        pytest.fail(f"{path.name}: a cell failed:\n{e}")
    elapsed = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert elapsed < TIME_LIMIT_S, f"{path.name} took {elapsed:.0f} s (limit {TIME_LIMIT_S} s)"
    print(f"{path.name}: {elapsed:.1f} s")
