"""S5.ipynb runs headless, end to end, against a smoke search's results folder."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(searched):
    """The session's shared smoke search (tests/conftest.py): the notebook only reads it."""
    assert searched.code == 0
    return searched.out


def run_notebook(results_dir, monkeypatch):
    monkeypatch.setenv("S5_EPOCHS", "1")
    monkeypatch.setenv("S5_TRAIN_SIZE", "1024")
    monkeypatch.setenv("S5_RESULTS", str(results_dir))
    nb = nbformat.read(os.path.join(ROOT, "S5.ipynb"), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    return nb


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if kind(o)]


def test_notebook_reviews_a_search(results, monkeypatch):
    nb = run_notebook(results, monkeypatch)
    assert not outputs(nb, lambda o: o.get("output_type") == "error")
    pngs = outputs(nb, lambda o: "image/png" in o.get("data", {}))
    # sample grid, curves, misclassified, 3 Optuna plots, trial curves, retrain curves
    assert len(pngs) == 8
    text = "".join(o.get("text", "") for o in outputs(nb, lambda o: o.get("output_type") == "stream"))
    assert "593,200" in text and "best config" in text and "experiment smoke" in text


def test_notebook_explains_missing_results(tmp_path, monkeypatch):
    nb = run_notebook(tmp_path, monkeypatch)
    assert not outputs(nb, lambda o: o.get("output_type") == "error")
    text = "".join(o.get("text", "") for o in outputs(nb, lambda o: o.get("output_type") == "stream"))
    assert "No finished search in" in text and "python -m tuner.search" in text
