import json

import pytest
import torch

from mnist_net import train
from mnist_net.model import Net


def test_smoke_run_writes_model_metrics_and_curves(tmp_path, capsys):
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"config": {"lr": 0.02, "momentum": 0.5, "batch_size": 256},
                                  "val_acc": 98.0}))
    out = tmp_path / "out"
    code = train.main(["--smoke-test", "--config", str(config), "--momentum", "0.8", "--out", str(out)])
    assert code == 0
    assert "Traceback" not in capsys.readouterr().err

    metrics = json.loads((out / "s5_metrics.json").read_text())
    cfg = metrics["config"]
    # smoke preset < config file < explicit flags
    assert (cfg["lr"], cfg["batch_size"], cfg["momentum"]) == (0.02, 256, 0.8)
    assert (cfg["epochs"], cfg["train_size"], cfg["eval_size"]) == (2, 2048, 1000)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for e in metrics["epochs"]:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "images_per_s"):
            assert isinstance(e[key], float), key
        assert 0 <= e["test_acc"] <= 100 and e["images_per_s"] > 0
    assert metrics["diverged"] is False
    assert metrics["test"]["acc"] > 10 and metrics["test"]["loss"] > 0  # beats chance
    assert "versions" in metrics["provenance"]

    state = torch.load(out / "s5_model.pt", weights_only=True)
    model = Net()
    model.load_state_dict(state)  # strict: every key and shape matches
    torch.manual_seed(1)
    assert not torch.equal(model.fc2.weight, Net().fc2.weight)  # trained, not the initial weights

    png = (out / "s5_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def parse(argv):
    return train.config_from_args(train.build_parser().parse_args(argv))


def test_config_file_and_flag_precedence(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"config": {"lr": 0.05, "batch_size": 128}}))
    assert parse(["--config", str(path)]).lr == 0.05
    cfg = parse(["--config", str(path), "--lr", "0.2", "--smoke-test", "--no-augment"])
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.augment) == (0.2, 128, 2, False)
    assert parse([]) == train.TrainConfig()
    assert parse(["--smoke-test", "--epochs", "5"]).epochs == 5


def test_compile_mode_flag_sets_both_fields():
    cfg = parse(["--compile-mode", "reduce-overhead"])
    assert (cfg.compile, cfg.compile_mode) == (True, "reduce-overhead")
    assert (parse(["--compile"]).compile, parse(["--compile"]).compile_mode) == (True, "default")
    assert parse(["--compile", "--compile-mode", "off"]).compile is False
    assert parse([]).compile is False  # eager unless a GPU measurement shows a gain (bench/gpu.sh)


def run_bad(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")
    assert "error:" in captured.err
    return captured.err


@pytest.mark.parametrize("argv, words", [
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--momentum", "1"], "--momentum"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "2.5"], "--batch-size"),
    (["--epochs", "x"], "--epochs"),
    (["--precision", "fp8"], "--precision"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 requested but cpu"),
    (["--compile-mode", "fast"], "--compile-mode"),
    (["--bogus"], "--bogus"),
])
def test_bad_flags_fail_in_one_line(argv, words, capsys, tmp_path):
    err = run_bad(argv + ["--out", str(tmp_path / "out")], capsys)
    assert words in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, words", [
    (None, "does not exist"),
    ('{"lr": 0.1, "learning_rate": 0.1}', "learning_rate"),
    ('{"lr": 0.1,', "not valid JSON"),
    ('{"config": {"lr": -2}}', "lr must be"),
    ("[0.1]", "JSON object"),
])
def test_bad_config_fails_in_one_line_and_leaves_out_untouched(text, words, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sentinel = out / "s5_metrics.json"
    sentinel.write_text('{"keep": true}\n')
    config = tmp_path / "cfg.json"
    if text is not None:
        config.write_text(text)
    err = run_bad(["--smoke-test", "--config", str(config), "--out", str(out)], capsys)
    assert words in err
    assert sentinel.read_text() == '{"keep": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["s5_metrics.json"]


def test_out_pointing_at_a_file_fails_in_one_line(capsys, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("precious\n")
    err = run_bad(["--smoke-test", "--out", str(target)], capsys)
    assert "is a file" in err
    assert target.read_text() == "precious\n"


def test_help_exits_zero_and_shows_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for default in ("default 0.01", "default 0.9", "default 512", "default 20", "default: results"):
        assert default in text
