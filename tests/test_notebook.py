"""S5.ipynb runs headless, end to end, against a smoke search's results folder and against an empty one.

The two runs are two Jupyter kernels executed at once (nbclient's async_execute): each spends seconds starting
and importing on one core, which the other's work fills."""

import asyncio
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def executed(searched, tmp_path_factory):
    """{"search": the notebook run on the session's shared smoke search (it only reads it), "missing": run on an
    empty results folder}."""
    assert searched.code == 0
    folders = {"search": searched.out, "missing": tmp_path_factory.mktemp("no-results")}
    notebooks = {k: nbformat.read(os.path.join(ROOT, "S5.ipynb"), as_version=4) for k in folders}

    async def run_all():
        await asyncio.gather(*(run_notebook(notebooks[k], folder) for k, folder in folders.items()))

    asyncio.run(run_all())
    return notebooks


async def run_notebook(nb, results_dir) -> None:
    env = {**os.environ, "S5_EPOCHS": "1", "S5_TRAIN_SIZE": "1024", "S5_RESULTS": str(results_dir)}
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    await client.async_execute(env=env)


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if kind(o)]


def test_notebook_reviews_a_search(executed):
    nb = executed["search"]
    assert not outputs(nb, lambda o: o.get("output_type") == "error")
    pngs = outputs(nb, lambda o: "image/png" in o.get("data", {}))
    # sample grid, curves, misclassified, 3 Optuna plots, trial curves, retrain curves
    assert len(pngs) == 8
    text = "".join(o.get("text", "") for o in outputs(nb, lambda o: o.get("output_type") == "stream"))
    assert "593,200" in text and "best config" in text and "experiment smoke" in text


def test_notebook_explains_missing_results(executed):
    nb = executed["missing"]
    assert not outputs(nb, lambda o: o.get("output_type") == "error")
    text = "".join(o.get("text", "") for o in outputs(nb, lambda o: o.get("output_type") == "stream"))
    assert "No finished search in" in text and "python -m tuner.search" in text
