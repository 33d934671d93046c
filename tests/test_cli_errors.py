"""Bad input to `tuner.search` and `tuner.retrain`: exit code 2, one line on stderr, no traceback,
and nothing that already exists is touched. Every case here fails before any training."""

import json
import socket

import pytest

from tuner import retrain, search


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def fails_in_one_line(main, argv, capfd) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capfd.readouterr()
    assert info.value.code == 2, captured.err
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert "error:" in captured.err
    return captured.err


@pytest.fixture
def no_ray(monkeypatch):
    """These errors are found before Ray starts: a second, and no Ray log lines around the error."""
    import ray

    def started(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", started)


@pytest.fixture
def out(tmp_path):
    """A results folder holding a previous search's files, which a failing run must leave alone."""
    folder = tmp_path / "results"
    (folder / "old").mkdir(parents=True)
    (folder / "best_config.json").write_text('{"sentinel": 1}\n')
    (folder / "old" / "retrain.json").write_text('{"sentinel": 2}\n')
    return folder


def unchanged(folder) -> bool:
    return ((folder / "best_config.json").read_text() == '{"sentinel": 1}\n'
            and (folder / "old" / "retrain.json").read_text() == '{"sentinel": 2}\n'
            and sorted(p.name for p in folder.iterdir()) in (["best_config.json", "old"],
                                                              ["best_config.json", "old", "ray"]))


@pytest.mark.parametrize("argv, words", [
    (["--num-samples", "0"], "--num-samples"),
    (["--num-samples", "-2"], "--num-samples"),
    (["--num-samples", "2.5"], "--num-samples"),
    (["--num-samples", "many"], "--num-samples"),
    (["--max-epochs", "0"], "--max-epochs"),
    (["--train-size", "60000"], "train_size 60000 exceeds"),
    (["--eval-size", "10001"], "eval_size"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["--gpus-per-trial", "1.5"], "gpus_per_trial"),
    (["--gpus-per-trial", "2"], "a trial trains on one GPU"),
    (["--time-budget", "0"], "must be a positive duration"),
    (["--time-budget", "0m"], "must be a positive duration"),
    (["--time-budget=-5m"], "must be a positive duration"),
    (["--time-budget", "twenty minutes"], "is not a duration"),
    (["--time-budget", "20x"], "is not a duration"),
    (["--time-budget", ""], "is not a duration"),
    (["--time-budget", "inf"], "is not a duration"),
    (["--time-budget", "nan"], "is not a duration"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--gpus-per-trial", "inf"], "--gpus-per-trial"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--seed", "-1"], "--seed"),
    (["--confirm-top", "0"], "--confirm-top"),
    (["--confirm-top", "-3"], "--confirm-top"),
    (["--confirm-top", "2.5"], "--confirm-top"),
    (["--confirm-top", "9", "--num-samples", "8"], "confirm_top 9 exceeds num_samples 8"),
    (["--confirm-seeds", "0"], "--confirm-seeds"),
    (["--confirm-train-size", "50001"], "confirm_train_size 50001 exceeds"),
    (["--compile-mode", "fast"], "--compile-mode"),
    (["--bogus"], "--bogus"),
    (["--name", "a/b"], "--name"),
    (["--name", "../up"], "--name"),
    (["--name", ""], "--name"),
    (["--address", "no-port-here"], "not host:port"),
    (["--resume"], "nothing to resume"),
    (["--resume", "--name", "never-ran"], "nothing to resume"),
])
def test_search_bad_input(argv, words, out, capfd, no_ray):
    err = fails_in_one_line(search.main, argv + ["--out", str(out)], capfd)
    assert words in err
    assert unchanged(out)


def test_search_unreachable_address_fails_fast(out, capfd, no_ray):
    port = closed_port()
    err = fails_in_one_line(search.main, ["--address", f"127.0.0.1:{port}", "--out", str(out)], capfd)
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err
    assert unchanged(out)


def test_search_out_is_a_file(tmp_path, capfd, no_ray):
    path = tmp_path / "results"
    path.write_text("not a folder")
    err = fails_in_one_line(search.main, ["--out", str(path)], capfd)
    assert "is a file" in err
    assert path.read_text() == "not a folder"


def test_search_storage_under_a_file(out, tmp_path, capfd, no_ray):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    err = fails_in_one_line(search.main, ["--storage", str(blocker / "ray"), "--out", str(out)], capfd)
    assert "cannot create output folder" in err and str(blocker) in err
    assert blocker.read_text() == "x"
    assert unchanged(out)


def test_search_existing_experiment_needs_resume(out, capfd, no_ray):
    # `old` has a summary folder in --out: a new search under that name would overwrite it.
    err = fails_in_one_line(search.main, ["--name", "old", "--out", str(out)], capfd)
    assert "already exists" in err and "--resume" in err
    assert unchanged(out)


def test_search_gpu_share_without_gpu_fails_after_ray_starts_and_stops_ray(out, capfd):
    """The one check that needs the cluster's resources: Ray is up when it fails, and shut down."""
    import ray

    with pytest.raises(SystemExit) as info:
        search.main(["--gpus-per-trial", "0.5", "--out", str(out), "--name", "gpu"])
    err = capfd.readouterr().err
    assert info.value.code == 2
    assert "Traceback" not in err
    # Ray may log its own warnings while starting; our message is the one last line.
    assert err.splitlines()[-1].startswith("python -m tuner.search: error: --gpus-per-trial 0.5 asked for")
    assert not ray.is_initialized()
    assert not (out / "gpu").exists()  # no summary folder for a search that never ran


@pytest.mark.parametrize("main", [search.main, retrain.main])
def test_help_exits_zero(main, capfd):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capfd.readouterr().out
    assert text.startswith("usage: python -m tuner.")
    assert "--smoke-test" in text and "default" in text


# --- retrain ---------------------------------------------------------------------------------

GOOD = {"config": {"lr": 0.02, "momentum": 0.9, "batch_size": 256}}


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    ("", "is not valid JSON"),
    (json.dumps(GOOD)[:-7], "is not valid JSON"),  # truncated
    ("lr=0.02 momentum=0.9", "is not valid JSON"),
    ("[1, 2, 3]", "has no \"config\""),
    (json.dumps({"val_acc": 99.0}), "has no \"config\""),
    (json.dumps({"config": {"lr": 0.02, "momentum": 0.9}}), "has no \"config\""),
    (json.dumps({"config": {**GOOD["config"], "colour": "red"}}), "colour"),
    (json.dumps({"config": {**GOOD["config"], "epochs": 50}}), "exactly"),
    (json.dumps({"config": {**GOOD["config"], "lr": "abc"}}), "lr must be a positive number"),
    (json.dumps({"config": {**GOOD["config"], "lr": -0.1}}), "lr must be a positive number"),
    (json.dumps({"config": {**GOOD["config"], "momentum": 1.5}}), "momentum"),
    (json.dumps({"config": {**GOOD["config"], "batch_size": 256.5}}), "batch_size"),
    (json.dumps({"config": {**GOOD["config"], "batch_size": "256"}}), "batch_size"),
    # the seed's config is trained second: it is checked before the best one runs
    (json.dumps({**GOOD, "seed_config": {"lr": "abc", "momentum": 0.9, "batch_size": 512}}),
     "\"seed_config\": lr must be"),
    (json.dumps({**GOOD, "seed_config": [0.01, 0.9, 512]}), "seed_config"),
    (json.dumps({**GOOD, "experiment": "s5-1"}), "experiment"),
])
def test_retrain_bad_config_file(content, words, tmp_path, capfd):
    path = tmp_path / "best_config.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    (out / "retrain.json").write_text("sentinel")
    err = fails_in_one_line(retrain.main, ["--config", str(path), "--out", str(out), "--smoke-test"], capfd)
    assert words in err
    assert (out / "retrain.json").read_text() == "sentinel"
    assert sorted(p.name for p in out.iterdir()) == ["retrain.json"]


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "two"], "--seeds"),
    (["--epochs", "0"], "--epochs"),
    (["--train-size", "-5"], "--train-size"),
    (["--bogus"], "--bogus"),
])
def test_retrain_bad_flags(argv, words, tmp_path, capfd):
    path = tmp_path / "best_config.json"
    path.write_text(json.dumps(GOOD))
    err = fails_in_one_line(retrain.main, ["--config", str(path), "--out", str(tmp_path / "out")] + argv, capfd)
    assert words in err
    assert not (tmp_path / "out").exists()


def test_retrain_out_is_a_file(tmp_path, capfd):
    path = tmp_path / "best_config.json"
    path.write_text(json.dumps(GOOD))
    (tmp_path / "out").write_text("x")
    err = fails_in_one_line(retrain.main, ["--config", str(path), "--out", str(tmp_path / "out")], capfd)
    assert "is a file" in err
