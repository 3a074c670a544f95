"""A user's own model through the config and the pipeline, named by import path: no zoo fields
(``widths``, ``layer_kwargs``, ``layer_specs``), constructor arguments from ``config.model.kwargs``.
Tiny: digits (8x8), a 4-wide NestedResNet, one epoch."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
import user_models

from xaijax import config_utils, models, pipeline, training
from xaijax.defaults import base_config


def user_config(name: str = "user_models:NestedResNet", **kwargs):
    config = base_config()
    config.data.name = "digits"
    config.model.name = name
    config.model.kwargs = kwargs
    config.train.epochs = 1
    config.train.batch_size = 128
    config.train.eval_batch_size = 400
    config.train.log_every_steps = 100
    config.compress.stages = ()
    config.compress.criteria = ("deeplift", "magnitude")
    config.compress.explain_examples = 2
    config.compress.importance_examples = 32
    config.compress.export_artifact = False
    return config


def test_validation_builds_the_user_model_with_its_kwargs():
    config = config_utils.validate_config(user_config(width=4))
    model = training.model_from_config(config)
    assert isinstance(model, user_models.NestedResNet) and model.width == 4
    assert model.num_classes == 10


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("user_models:NoSuchNet", {}, "has no attribute 'NoSuchNet'"),
        ("no_such_package.models:Net", {}, "cannot import 'no_such_package.models'"),
        ("NestedResNet", {}, "config.model.name must be one of"),
        ("user_models:NestedResNet", {"depth": 3}, "cannot be built with ['depth']"),
        ("user_models:NestedResNet", {"widths": {"stem": 2}}, "must not set ['widths']"),
        # No `train` in its __call__: the training loop could not run it.
        ("user_models:BranchyCNN", {}, "whose __call__ takes `train`"),
        ("user_models:SmallResNet", {"num_classes": 7}, "must not set ['num_classes']"),
    ],
)
def test_bad_user_models_name_the_field(name, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_utils.validate_config(user_config(name, **kwargs))


def five_classes() -> user_models.SmallResNet:
    """A model function without ``num_classes``: built as written, with a 5-class head."""
    return user_models.SmallResNet(5)


def test_user_model_must_give_the_dataset_classes():
    with pytest.raises(ValueError, match=re.escape("logits of shape (batch, 10)")):
        config_utils.validate_config(user_config("test_user_model_pipeline:five_classes"))


def test_pipeline_trains_and_explains_a_user_model(tmp_path):
    config = user_config(width=4)
    results = pipeline.run(config, tmp_path / "run")
    model = training.model_from_config(config)
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    specs = models.discover_layer_specs(model, x, train=False)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    costs = models.traced_layer_costs(model, variables, specs, x, train=False)
    assert results["baseline"]["params"] == models.count_params(variables["params"])
    assert results["baseline"]["flops"] == sum(c["flops"] for c in costs.values())
    assert 0.0 <= results["baseline"]["accuracy"] <= 1.0
    assert (tmp_path / "run" / "report.md").exists()
