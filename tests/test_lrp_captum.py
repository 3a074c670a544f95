"""xaijax.lrp against Captum 0.9.0's LRP on LeNet-5 (runs only where the optional ``crosscheck``
extra, PyTorch and Captum, is installed: ``pip install -e '.[crosscheck]'``).

The same float64 weights on both sides (``scripts/crosscheck_lrp_captum.py`` copies them); the
epsilon rule on every Conv / Linear layer; inputs with a small jitter, so no max-pool window has
tied maxima (which the two route differently).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")

from xaijax import lrp, models  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crosscheck_lrp_captum.py"


def _script():
    spec = importlib.util.spec_from_file_location("crosscheck_lrp_captum", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def x64():
    """float64 JAX for the test (restored after it)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("eps", [0.01, 0.25])
def test_lrp_epsilon_equals_captum_on_lenet5(eps, x64):
    script = _script()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(8, 28, 28, 1)) + 1e-3 * rng.normal(size=(8, 28, 28, 1))
    labels = rng.integers(0, 10, size=8)
    model = models.LeNet5()
    variables = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1), jnp.float64))
    variables = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
    module = script.torch_lenet5(torch).double().eval()
    script.copy_weights(torch, module, variables["params"])
    ours = lrp.relevance(
        lambda x: model.apply(variables, x),
        jnp.asarray(images),
        target=jnp.asarray(labels),
        rules=lrp.epsilon(eps),
    )
    for layer in (module.conv1, module.conv2, module.fc1, module.fc2, module.fc3):
        layer.rule = lrp_rules.EpsilonRule(epsilon=eps)
    x = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy())
    theirs = captum_attr.LRP(module).attribute(x, target=torch.from_numpy(labels)).detach().numpy()
    ours = np.transpose(np.asarray(ours), (0, 3, 1, 2))
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, atol=1e-6 * np.abs(theirs).max())
