"""Model zoo: shapes, hand-counted parameters and FLOPs, layer metadata, widths and op injection."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xaijax import models

INPUT_SHAPES = {
    "lenet5": (28, 28, 1),
    "vgg_small": (28, 28, 1),
    "vgg16": (32, 32, 3),
    "resnet20": (32, 32, 3),
}


def init(model, shape):
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32))


def init_shapes(model, shape):
    """Variable shapes without compiling anything (``jax.eval_shape``)."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape), jnp.float32))


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_output_shape(name):
    model = models.get_model(name, num_classes=7)
    shape = INPUT_SHAPES[name]
    variables = init_shapes(model, shape)
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (3, 7)


@pytest.mark.parametrize("name", ["lenet5", "vgg_small"])
def test_outputs_are_finite(name):
    model = models.get_model(name)
    shape = INPUT_SHAPES[name]
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    assert np.all(np.isfinite(model.apply(init(model, shape), x, train=False)))


def test_lenet5_hand_counted_params_and_flops():
    model = models.get_model("lenet5")
    variables = init(model, (28, 28, 1))
    # Kernel entries plus one bias per output unit.
    expected_params = {
        "conv1": 5 * 5 * 1 * 6 + 6,
        "conv2": 5 * 5 * 6 * 16 + 16,
        "fc1": 5 * 5 * 16 * 120 + 120,
        "fc2": 120 * 84 + 84,
        "fc3": 84 * 10 + 10,
    }
    # conv1 (SAME) keeps 28x28 positions; conv2 (VALID) on 14x14 gives 10x10 positions.
    expected_flops = {
        "conv1": 2 * 28 * 28 * 5 * 5 * 1 * 6,
        "conv2": 2 * 10 * 10 * 5 * 5 * 6 * 16,
        "fc1": 2 * 400 * 120,
        "fc2": 2 * 120 * 84,
        "fc3": 2 * 84 * 10,
    }
    costs = models.layer_costs(model, variables, (28, 28, 1))
    assert {k: v["params"] for k, v in costs.items()} == expected_params
    assert {k: v["flops"] for k, v in costs.items()} == expected_flops
    assert models.count_params(variables["params"]) == sum(expected_params.values())


def test_vgg_small_params_include_batchnorm():
    model = models.get_model("vgg_small")
    variables = init(model, (28, 28, 1))
    costs = models.layer_costs(model, variables, (28, 28, 1))
    # conv3 maps 32 -> 64 channels with a 3x3 kernel, bias and BatchNorm scale + offset.
    assert costs["conv3"]["params"] == 3 * 3 * 32 * 64 + 64 + 2 * 64
    # Two 2x2 pools: 28 -> 14 -> 7, so fc1 sees 7 * 7 * 64 inputs.
    assert costs["fc1"]["params"] == 7 * 7 * 64 * 256 + 256
    assert costs["conv3"]["flops"] == 2 * 14 * 14 * 3 * 3 * 32 * 64
    assert models.count_params(variables["params"]) == sum(c["params"] for c in costs.values())


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_layer_specs_match_parameter_shapes(name):
    """Every consumer's input channels are its producer's output channels (flatten: row % C)."""
    model = models.get_model(name)
    params = init_shapes(model, INPUT_SHAPES[name])["params"]
    specs = models.layer_specs(model)
    assert [s.is_classifier for s in specs].count(True) == 1 and specs[-1].is_classifier
    for spec in specs:
        out_units = params[spec.name]["kernel"].shape[-1]
        assert params[spec.name]["bias"].shape == (out_units,)
        if spec.bn is not None:
            assert params[spec.bn]["scale"].shape == (out_units,)
        for consumer in spec.consumers:
            in_rows = params[consumer]["kernel"].shape[-2]
            assert in_rows % out_units == 0, (spec.name, consumer)


def test_resnet_tied_groups_share_width():
    model = models.get_model("resnet20")
    params = init_shapes(model, (32, 32, 3))["params"]
    groups: dict[str, set[int]] = {}
    for spec in models.layer_specs(model):
        if spec.tied_group is not None:
            groups.setdefault(spec.tied_group, set()).add(params[spec.name]["kernel"].shape[-1])
    assert groups == {"stage1": {16}, "stage2": {32}, "stage3": {64}}


def test_widths_narrow_the_model():
    widths = {"conv1": 3, "conv2": 5, "fc1": 7, "fc2": 9}
    model = models.get_model("lenet5", widths=widths)
    params = init_shapes(model, (28, 28, 1))["params"]
    assert {name: params[name]["kernel"].shape[-1] for name in widths} == widths
    assert params["fc1"]["kernel"].shape[0] == 5 * 5 * 5


def test_resnet_narrow_stage_and_inner_widths():
    widths = {
        "conv1": 8,
        "stage1_block1_conv2": 8,
        "stage1_block2_conv2": 8,
        "stage1_block3_conv2": 8,
        "stage2_block1_conv1": 5,
    }
    model = models.get_model("resnet20", widths=widths)
    variables = init_shapes(model, (32, 32, 3))
    assert variables["params"]["stage2_block1_conv1"]["kernel"].shape == (3, 3, 8, 5)
    assert variables["params"]["stage1_block3_conv2"]["kernel"].shape[-1] == 8


def test_resnet_rejects_inconsistent_tied_widths():
    model = models.get_model("resnet20", widths={"conv1": 8, "stage1_block2_conv2": 16})
    with pytest.raises(ValueError, match="tied"):
        init_shapes(model, (32, 32, 3))


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("alexnet")
    with pytest.raises(ValueError, match="unknown layers"):
        init_shapes(models.get_model("lenet5", widths={"conv9": 3}), (28, 28, 1))
    with pytest.raises(ValueError, match="positive integer"):
        init_shapes(models.get_model("lenet5", widths={"conv1": 0}), (28, 28, 1))


def test_layer_kwargs_inject_ops_into_named_layers():
    """A doubled dot_general in fc3 doubles the logits minus the bias (and touches nothing else)."""

    def doubled(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        return 2.0 * jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision)

    plain = models.get_model("lenet5")
    variables = init(plain, (28, 28, 1))
    patched = models.get_model("lenet5", layer_kwargs={"fc3": {"dot_general": doubled}})
    x = jax.random.normal(jax.random.key(2), (2, 28, 28, 1))
    bias = variables["params"]["fc3"]["bias"]
    np.testing.assert_allclose(
        patched.apply(variables, x) - bias,
        2.0 * (plain.apply(variables, x) - bias),
        rtol=1e-5,
        atol=1e-5,
    )


def test_batchnorm_train_mode_updates_statistics():
    model = models.get_model("vgg_small", widths={"conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4})
    variables = init(model, (28, 28, 1))
    x = jax.random.normal(jax.random.key(3), (4, 28, 28, 1)) + 1.0
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["conv1_bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["conv1_bn"]["mean"], before)
    assert isinstance(model, nn.Module)


def test_every_zoo_model_meets_the_protocol_and_a_registered_model_builds_by_name():
    import flax.linen as nn

    from xaijax.config_utils import validate_config
    from xaijax.defaults import base_config

    for name in models.MODEL_NAMES:
        assert isinstance(models.get_model(name), models.PrunableModel), name

    class Tiny(nn.Module):
        num_classes: int = 10
        widths: dict | None = None
        layer_kwargs: dict | None = None

        def layer_specs(self):
            return (models.LayerSpec("fc", "dense", is_classifier=True),)

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))

    models.register_model("test_tiny", Tiny)
    assert isinstance(models.get_model("test_tiny", num_classes=3), Tiny)
    config = base_config()
    config.data.name, config.model.name = "digits", "test_tiny"
    validate_config(config)  # A registered model is a valid config.model.name.
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("lenet5", Tiny)
    with pytest.raises(ValueError, match="test_tiny"):
        models.get_model("nope")
