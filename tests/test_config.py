import json

import pytest

from mnist_net.config import TrainConfig, load_config_file


def test_defaults_are_the_seed_recipe():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.epochs, cfg.lr_step_size, cfg.gamma) == (
        0.01, 0.9, 512, 20, 15, 0.1)
    assert cfg.train_split == "train+val" and cfg.augment is True
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("epochs, step", [(20, 15), (8, 6), (4, 3), (6, 5), (2, 2), (1, 1)])
def test_lr_decay_follows_the_epoch_budget(epochs, step):
    assert TrainConfig(epochs=epochs).lr_step_size == step
    assert TrainConfig(epochs=epochs, step_size=7).lr_step_size == 7  # an explicit step wins
    assert TrainConfig(epochs=epochs, decay_fraction=0.5).lr_step_size == max(1, int(epochs * 0.5 + 0.5))


@pytest.mark.parametrize("field, value", [
    ("lr", 0), ("lr", -1), ("lr", float("nan")), ("lr", float("inf")), ("lr", "0.1"),
    ("lr", True), ("momentum", 1.0), ("momentum", -0.1), ("momentum", False), ("gamma", True),
    ("batch_size", 0), ("batch_size", 2.5), ("batch_size", True),
    ("epochs", True), ("epochs", -3), ("step_size", 0), ("step_size", 2.0),
    ("decay_fraction", 0), ("decay_fraction", 1.5), ("gamma", 0), ("seed", -1),
    ("train_split", "x"), ("precision", "fp8"), ("train_size", 0), ("eval_size", 1.5),
    ("augment", "yes"), ("device", ""),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        TrainConfig().replace(**{field: value})


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"lr": 0.1, "learning_rate": 0.1})


def test_from_dict_overrides_a_base():
    base = TrainConfig(epochs=3)
    cfg = TrainConfig.from_dict({"lr": 0.05}, base)
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.05, 3, 512)


def write(tmp_path, text, name="cfg.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_plain_mapping(tmp_path):
    cfg = load_config_file(write(tmp_path, json.dumps({"lr": 0.05, "batch_size": 128})))
    assert (cfg.lr, cfg.batch_size, cfg.momentum) == (0.05, 128, 0.9)


def test_load_best_config_wrapper(tmp_path):
    best = {"config": {"lr": 0.02, "momentum": 0.8, "batch_size": 256}, "val_acc": 99.1}
    cfg = load_config_file(write(tmp_path, json.dumps(best)), TrainConfig(epochs=2))
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.epochs) == (0.02, 0.8, 256, 2)


@pytest.mark.parametrize("text, match", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('"lr"', "JSON object"),
    ('{"lr": 0.1, "bogus": 1}', "bogus"),
    ('{"lr": -0.1}', "lr"),
])
def test_load_bad_files(tmp_path, text, match):
    path = tmp_path / "cfg.json" if text is None else write(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        load_config_file(path)
