"""A user's own model through the config and the pipeline, named by import path: no zoo fields
(``widths``, ``layer_kwargs``, ``layer_specs``), constructor arguments from ``config.model.kwargs``.
Tiny: digits (8x8), a 4-wide NestedResNet, one epoch; every stage but ``joint`` on it (pruning
shrinks it with ``shrink_any``, sharing and quantization start from the shrunk model)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import user_models

from xaijax import config_utils, models, pipeline, pruning, training
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


def nested_resnet_params(widths: dict[str, int], in_channels: int, classes: int) -> int:
    """Parameters of a ``NestedResNet`` whose layers have ``widths`` output units, counted from
    its code by hand: 3x3 convs without bias, each followed by a BatchNorm (scale and offset), a
    1x1 projection with bias, and the Dense head on the last block's channels."""
    total, channels = 0, in_channels

    def conv_bn(size: int, cin: int, cout: int, bias: bool = False) -> int:
        return size * size * cin * cout + (cout if bias else 0) + 2 * cout

    total += conv_bn(3, channels, widths["stem"])
    channels = widths["stem"]
    for block in ("Stage_0/ShapeComparingBlock_0", "Stage_0/ShapeComparingBlock_1"):
        first, second = widths[f"{block}/Conv_0"], widths[f"{block}/Conv_1"]
        total += conv_bn(3, channels, first) + conv_bn(3, first, second)
        channels = second
    block = "Stage_1/ShapeComparingBlock_0"
    first, second = widths[f"{block}/Conv_0"], widths[f"{block}/Conv_1"]
    total += conv_bn(3, channels, first) + conv_bn(3, first, second)
    total += conv_bn(1, channels, widths[f"{block}/proj"], bias=True)
    return total + second * classes + classes


def test_pipeline_trains_explains_prunes_shares_and_quantizes_a_user_model(tmp_path):
    """The baseline, explain, prune (structured, shrunk by ``shrink_any``), share and quantize
    on the unmodified NestedResNet: the shrunk model scores as the masked one, its parameters are
    those counted by hand, and the later stages start from it; the report is written."""
    from xaijax import checkpoint
    from xaijax.experiments import common, prune

    config = user_config(width=4)
    config.compress.stages = ("prune", "share", "quantize")
    config.prune.update(
        dict(
            granularity="unit",
            conv_sparsity=0.5,
            finetune_epochs=1,
            importance=dict(num_examples=64, batch_size=64),
        )
    )
    config.share.update(
        dict(
            bits=(2,), importances=("deeplift",), finetune_epochs=1, importance={"num_examples": 32}
        )
    )
    config.quantize.update(
        dict(
            budgets=(4.0,),
            strategies=("deeplift_sensitivity",),
            finetune_epochs=1,
            importance=dict(num_examples=32, batch_size=32),
            hessian_examples=32,
            hessian_samples=2,
        )
    )
    config.compress.consistency_examples = 64
    config.compress.export_artifact = True
    workdir = tmp_path / "run"
    results = pipeline.run(config, workdir)
    model = training.model_from_config(config)
    splits = training.datasets_from_config(config)

    # The baseline's parameters and FLOPs are those of the traced layers.
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    specs = models.discover_layer_specs(model, x, train=False)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    costs = models.traced_layer_costs(model, variables, specs, x, train=False)
    assert results["baseline"]["params"] == models.count_params(variables["params"])
    assert results["baseline"]["flops"] == sum(c["flops"] for c in costs.values())
    assert 0.0 <= results["baseline"]["accuracy"] <= 1.0
    dense = {
        "stem": 4,
        **{f"Stage_0/ShapeComparingBlock_{i}/Conv_{j}": 4 for i in (0, 1) for j in (0, 1)},
        **{f"Stage_1/ShapeComparingBlock_0/{n}": 8 for n in ("Conv_0", "Conv_1", "proj")},
    }
    # The count by hand is the library's at full width.
    assert nested_resnet_params(dense, 1, 10) == results["baseline"]["params"]

    for criterion in config.compress.criteria:
        run = results["prune"][criterion]
        shrunk = run["shrunk"]
        assert shrunk["accuracy"] == run["accuracy"]["after_finetune"]
        widths = shrunk["widths"]
        assert widths["head"] == 10
        assert {n: w for n, w in widths.items() if n != "head"} != dense  # something was pruned
        expected = nested_resnet_params(widths, 1, 10)
        assert shrunk["params"] == expected == run["params"]["masked_layers"]
        assert shrunk["flops"] == run["flops"]["masked"] < results["baseline"]["flops"]

        run_dir = workdir / "prune" / criterion
        narrow, narrow_variables = prune.load_result(model, run_dir)
        assert isinstance(narrow, pruning.Narrowed) and narrow.full == model
        assert models.count_params(narrow_variables["params"]) == expected
        for name, width in widths.items():
            kernel = models.layer_variables(narrow_variables["params"], name)["kernel"]
            assert kernel.shape[-1] == width
        masked = common.load_variables(run_dir / "pruned_variables")
        x = splits.test.images[:64]
        want = model.apply(masked, x, train=False)
        got = narrow.apply(narrow_variables, x, train=False)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
        accuracy = common.evaluate_test(narrow, narrow_variables, splits, 400)["accuracy"]
        assert accuracy == shrunk["accuracy"]

    # Share and quantize started from the shrunk model of the carried criterion.
    carried = workdir / "prune" / config.compress.carry / "shrunk_variables"
    shrunk_params = checkpoint.load_variables(carried)["params"]
    kernels = {
        name: int(np.size(models.layer_variables(shrunk_params, name)["kernel"]))
        for name in results["prune"][config.compress.carry]["shrunk"]["widths"]
    }
    assert results["quantize"]["layer_sizes"] == kernels
    (quantized,) = results["quantize"]["runs"]
    assert quantized["integer_accuracy"] == quantized["qat_accuracy"]
    assert quantized["avg_bits"] <= 4.0
    assert quantized["size"]["float32_model"] == 4 * models.count_params(shrunk_params)
    (shared,) = results["share"]["rows"]
    assert shared["float32_bits"] == 32 * models.count_params(shrunk_params)
    assert results["artifact"]["accuracy"] == quantized["qat_accuracy"]
    assert results["consistency"]
    report = (workdir / "report.md").read_text()
    for stage in ("pruned (deeplift)", "weight sharing (deeplift, 2 bits)", "4 bits (QAT)"):
        assert stage in report
