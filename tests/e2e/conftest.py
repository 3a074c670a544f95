"""The digits config the end-to-end tests share.

A test module sets ``DIGITS`` (keyword arguments of :func:`digits_config_source`: how long to
train and how many examples each stage scores); the module-scoped fixture ``config_file`` writes
that config as a file the scripts read, and ``digits_config()`` loads a fresh copy of it in
process. Both stages compared by the main job and the study (DeepLIFT and magnitude pruning,
uniform and DeepLIFT weight sharing, uniform and DeepLIFT-sensitivity QAT at 4 bits) run with one
fine-tuning epoch each.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import ml_collections
import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "digits_smoke.py"


def digits_config_source(
    *,
    epochs: int,
    explain_examples: int,
    examples: int,
    prune_examples: int,
    prune_batch_size: int = 128,
    hessian_samples: int,
    widths: dict[str, int] | None = None,
) -> str:
    """A config file on ``configs/digits_smoke.py``: ``epochs`` of training, the pipeline's
    explain stage on ``examples``, pruning and weight sharing scored on ``prune_examples``
    (pruning in batches of ``prune_batch_size``), QAT's DeepLIFT and Hessian tables on
    ``examples`` (``hessian_samples`` probes), and ``widths`` (None: the smoke config's)."""
    widths_line = "" if widths is None else f"    config.model.widths = {widths!r}\n"
    return f"""
import importlib.util

spec = importlib.util.spec_from_file_location("smoke", {str(SMOKE)!r})
smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smoke)


def get_config():
    config = smoke.get_config()
{widths_line}    config.train.epochs = {epochs}
    config.compress.criteria = ("deeplift", "magnitude")
    config.compress.explain_examples = {explain_examples}
    config.compress.importance_examples = {examples}
    config.prune.update(
        dict(
            importance=dict(num_examples={prune_examples}, batch_size={prune_batch_size}),
            finetune_epochs=1,
        )
    )
    config.share.update(
        dict(
            bits=(2,),
            importances=("uniform", "deeplift"),
            importance=dict(num_examples={prune_examples}),
            finetune_epochs=1,
        )
    )
    config.quantize.update(
        dict(
            budgets=(4.0,),
            strategies=("uniform", "deeplift_sensitivity"),
            finetune_epochs=1,
            finetune_batch_size=64,
            importance=dict(num_examples={examples}, batch_size={examples}),
            hessian_examples={examples},
            hessian_samples={hessian_samples},
        )
    )
    return config
"""


def load_config(path: Path) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``path``."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def config_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test module's ``DIGITS`` config, written as ``<name>_digits.py`` for the module
    ``test_<name>`` (an ablation config of ``test_study`` imports ``study_digits``)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    path = tmp_path_factory.mktemp("config") / f"{name}_digits.py"
    path.write_text(digits_config_source(**request.module.DIGITS))
    return path


@pytest.fixture(scope="module")
def digits_config(config_file: Path) -> Callable[[], ml_collections.ConfigDict]:
    """A function returning a fresh copy of the module's config (:func:`load_config`)."""
    return lambda: load_config(config_file)
