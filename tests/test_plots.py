import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from mnist_net import plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def epochs(eval_name):
    return [{"epoch": i, "train_loss": 1.0 / i, "train_acc": 90 + i, f"{eval_name}_loss": 0.5 / i,
             f"{eval_name}_acc": 95 + i} for i in (1, 2, 3)]


@pytest.mark.parametrize("eval_name", ["test", "val"])
def test_curves(tmp_path, eval_name):
    fig = plots.curves(epochs(eval_name), tmp_path / "curves.png", title="S5")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Training Loss", "Training Accuracy", f"{eval_name.title()} Loss",
                      f"{eval_name.title()} Accuracy"]
    assert list(fig.axes[3].lines[0].get_ydata()) == [96, 97, 98]
    assert_png(tmp_path / "curves.png")


def test_curves_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(plots.curves(epochs("test")), Figure)
    assert list(tmp_path.iterdir()) == []


def test_sample_grid(small, tmp_path):
    data = small("test", 20)
    fig = plots.sample_grid(data.images, data.labels, tmp_path / "grid.png")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == [str(int(y)) for y in data.labels[:12]]
    assert_png(tmp_path / "grid.png")


def test_misclassified(small, tmp_path):
    data = small("test", 30)
    predictions = data.labels.clone()
    wrong = torch.tensor([2, 5, 11, 29])
    predictions[wrong] = (predictions[wrong] + 1) % 10
    fig = plots.misclassified(data.images, data.labels, predictions, tmp_path / "wrong.png")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == [
        f"{int(data.labels[i])} -> {int(predictions[i])}" for i in wrong]
    assert fig._suptitle.get_text() == "4 misclassified shown of 4"
    assert_png(tmp_path / "wrong.png")
