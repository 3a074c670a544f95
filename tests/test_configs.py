"""Config files, validation errors that name the field, and the train script end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from xaijax import data, models, pipeline, training
from xaijax.config_utils import validate_config
from xaijax.defaults import base_config
from xaijax.study import ablation

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))
CIFAR_CONFIGS = {"vgg16_cifar10.py", "resnet20_cifar10.py"}


def load_config(path: Path) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_every_required_config_exists():
    names = {p.name for p in CONFIGS}
    assert {
        "lenet5_fmnist.py",
        "vgg_small_fmnist.py",
        "vgg16_cifar10.py",
        "resnet20_cifar10.py",
        "digits_smoke.py",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_validate_and_build_their_parts(path, tmp_path, monkeypatch):
    config = load_config(path)
    if path.name in CIFAR_CONFIGS:
        monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
        with pytest.raises(ValueError, match=r"config\.data\.data_dir"):
            validate_config(config)
        config.data.data_dir = str(tmp_path)
    if config.data.name == "fashion_mnist" and not data.fashion_mnist_dir(None).is_dir():
        config.data.data_dir = str(tmp_path)
    validate_config(config)
    if "ablation" in config:  # An ablation config: a study config plus its variants.
        variants = ablation.variants_from_config(config.ablation.variants)
        for variant in variants:  # Every override names a real field with a valid value.
            pipeline.check_config(ablation.variant_config(config, variant, seed=0))
        with config.unlocked():
            del config["ablation"]
    assert set(config.keys()) == set(base_config().keys())
    model = training.model_from_config(config)
    assert isinstance(model, models.get_model(config.model.name).__class__)
    tx = training.make_optimizer(config.optimizer, steps_per_epoch=10, epochs=config.train.epochs)
    params = {"w": np.ones((2, 2), np.float32)}
    updates, _ = tx.update(params, tx.init(params), params)
    assert np.all(np.isfinite(updates["w"]))


BAD_VALUES = [
    ("train.epochs", -1, r"config\.train\.epochs must be an integer >= 1"),
    ("train.epochs", 0, r"config\.train\.epochs"),
    ("train.batch_size", 0, r"config\.train\.batch_size"),
    ("model.name", "alexnet", r"config\.model\.name must be one of"),
    ("model.num_classes", 7, r"config\.model\.num_classes must equal the 10 classes"),
    ("data.name", "imagenet", r"config\.data\.name must be one of"),
    ("data.data_dir", "/nonexistent/fmnist", r"config\.data\.data_dir must be an existing"),
    ("data.augment", "mixup", r"config\.data\.augment"),
    ("optimizer.name", "lamb", r"config\.optimizer\.name"),
    ("optimizer.learning_rate", -0.1, r"config\.optimizer\.learning_rate must be a number > 0"),
    ("optimizer.momentum", 1.5, r"config\.optimizer\.momentum"),
    ("optimizer.schedule", "linear", r"config\.optimizer\.schedule"),
    ("optimizer.warmup_epochs", 50.0, r"config\.optimizer\.warmup_epochs must be < train\.epochs"),
    ("train.keep_checkpoints", 0, r"config\.train\.keep_checkpoints"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_invalid_values_name_their_field(field, value, message):
    config = load_config(REPO / "configs" / "lenet5_fmnist.py")
    section, name = field.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_step_schedule_needs_increasing_boundaries_inside_training():
    config = load_config(REPO / "configs" / "digits_smoke.py")
    config.optimizer.schedule = "step"
    config.optimizer.decay_epochs = (2, 1)
    with pytest.raises(ValueError, match=r"config\.optimizer\.decay_epochs"):
        validate_config(config)
    config.optimizer.decay_epochs = (1, 2)
    validate_config(config)


def test_model_must_fit_the_dataset_images():
    config = load_config(REPO / "configs" / "digits_smoke.py")
    config.model.widths = None
    config.model.name = "lenet5"  # Its 5x5 VALID conv2 has no room on 8x8 digits.
    with pytest.raises(ValueError, match=r"config\.model: 'lenet5'.*\(8, 8, 1\)"):
        validate_config(config)


def test_widths_are_checked_against_the_model():
    config = load_config(REPO / "configs" / "digits_smoke.py")
    config.model.widths = {"conv9": 3}
    with pytest.raises(ValueError, match=r"config\.model.*conv9"):
        validate_config(config)
    config.model.widths = {"conv1": 0}
    with pytest.raises(ValueError, match=r"config\.model\.widths\.conv1"):
        validate_config(config)


def run_train(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--config",
        str(REPO / "configs" / "digits_smoke.py"),
        "--workdir",
        str(workdir),
        *overrides,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_train_script_writes_results_and_resumes(tmp_path):
    done = run_train(tmp_path, "--config.train.epochs=1", "--config.train.log_every_steps=5")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["epochs"] == 1 and results["config"]["train"]["epochs"] == 1
    assert results["steps"] == results["steps_per_epoch"] == 1438 // 64
    assert results["params"] == sum(layer["params"] for layer in results["layers"].values())
    assert results["flops"] == sum(layer["flops"] for layer in results["layers"].values())
    assert 0.0 <= results["test"]["accuracy"] <= 1.0 and results["test"]["num_examples"] == 359
    assert results["history"][-1]["accuracy"] == results["test"]["accuracy"]
    assert f"test accuracy {results['test']['accuracy']:.4f}" in done.stdout
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "variables").is_dir()

    # Same command again (a logging field changed): reuses the finished run, recomputes nothing.
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    again = run_train(tmp_path, "--config.train.epochs=1", "--config.train.log_every_steps=7")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp
    assert f"test accuracy {results['test']['accuracy']:.4f}" in again.stdout

    # A changed training field retrains from scratch; strict refuses, naming the field.
    strict = run_train(tmp_path, "--config.train.epochs=2", "--config.resume=strict")
    assert strict.returncode != 0 and "train.epochs: 1 -> 2" in strict.stderr
    longer = run_train(tmp_path, "--config.train.epochs=2")
    assert longer.returncode == 0, longer.stderr[-3000:]
    retrained = json.loads((tmp_path / "results.json").read_text())
    assert retrained["epochs"] == 2 and retrained["steps"] == 2 * results["steps"]
    assert len(retrained["history"]) == 2


def test_train_script_fails_on_bad_config_before_any_work(tmp_path):
    done = run_train(tmp_path / "w", "--config.train.epochs=-3")
    assert done.returncode != 0
    assert "config.train.epochs must be an integer >= 1" in done.stderr
    assert not (tmp_path / "w").exists()


def test_a_deep_copied_config_with_widths_still_validates():
    """``copy.deepcopy`` turns the ``model.widths`` dict into a ConfigDict; it is still valid."""
    import copy

    config = load_config(REPO / "configs" / "digits_smoke.py")
    copied = copy.deepcopy(config)
    validate_config(copied)
    from xaijax.config_utils import model_widths

    assert model_widths(copied) == model_widths(config) == dict(config.model.widths)
