"""Quantization (quantize_any) and physical shrinking (shrink_any) of unmodified user models.

References are computed another way: the fake-quantized model is the plain model applied to
variables whose kernels were replaced by ``fake_quantize`` (``straight_through`` for gradients);
the masked model is the plain model applied to ``xaijax.pruning.mask_variables`` (on the model's
own nested variables), itself checked against a reference that knows nothing of consumers or
concatenation offsets: the plain model with the removed units' outputs zeroed as they are
computed; kept parameter counts come from ``params_mask`` and, for the Sequential CNN, from the
layer shapes by hand.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import user_models
from flax import traverse_util

import xaijax
from xaijax.models import (
    count_params,
    discover_layer_specs,
    get_model,
    inference_kwargs,
    layer_costs,
    layer_variables,
    unwrap,
)
from xaijax.pruning import (
    mask_variables,
    params_mask,
    shrink,
    shrink_any,
    traced_layer_costs,
)
from xaijax.quantization import quantize_any, quantized_model
from xaijax.quantization.numerics import straight_through

#: name -> (model, input shape, apply kwargs, layer groups left out of the shrink tests).
USER_MODELS = {
    # Conv_0's group feeds ResidualBlock_0, whose code compares its input width with 8.
    "small_resnet": (user_models.SmallResNet(), (2, 8, 8, 3), {"train": False}, {"Conv_0"}),
    "nested_resnet": (user_models.NestedResNet(), (2, 8, 8, 3), {"train": False}, set()),
    "sequential": (user_models.sequential_cnn(), (2, 8, 8, 1), {}, set()),
    "branchy": (user_models.BranchyCNN(), (2, 8, 8, 3), {}, set()),
}


def by_layer(tree):
    """``{"Block_0/Conv_1": {"kernel": ...}}``: the layer-keyed view the pruning functions take."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(tree, sep="/").items():
        module, name = path.rsplit("/", 1)
        out.setdefault(module, {})[name] = leaf
    return out


def nested(tree):
    flat = {f"{m}/{k}": v for m, leaves in tree.items() for k, v in leaves.items()}
    return traverse_util.unflatten_dict(flat, sep="/")


def random_variables(model, x, **kwargs):
    """Variables shaped like ``model.init``'s, drawn with numpy (compiling the initializers takes
    longer than every test here): kernels ~ N(0, 1 / fan_in), BatchNorm scales and variances in
    [0.5, 1.5], other leaves ~ N(0, 0.1^2), so BatchNorm statistics differ between channels."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), x)
    rng = np.random.default_rng(0)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items():
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        flat[path] = jnp.asarray(value, leaf.dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


@functools.cache
def setup_model(name):
    model, shape, kwargs, skip = USER_MODELS[name]
    x = jax.random.normal(jax.random.key(0), shape)
    specs = discover_layer_specs(model, x, **kwargs)
    return model, x, random_variables(model, x, **kwargs), kwargs, specs, skip


def with_kernels(variables, bits, fn):
    """``variables`` with each named layer's kernel replaced by ``fn(kernel, bits)``."""
    params = by_layer(variables["params"])
    for layer, b in bits.items():
        params[layer] = {**params[layer], "kernel": fn(params[layer]["kernel"], b)}
    return {**variables, "params": nested(params)}


def bit_allocation(specs):
    widths = (3, 8, 4, 6, 5, 7, 8)
    return {spec.name: widths[i % len(widths)] for i, spec in enumerate(specs)}


def close(a, b, rtol=1e-5):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=rtol * scale, rtol=0)


# --- quantize_any -----------------------------------------------------------------------------


def outputs_and_gradients(apply, variables, x, kwargs, with_grads=True):
    """Jitted (outputs, d sum(w * outputs) / d params): one compilation per model."""
    weights = jax.random.normal(jax.random.key(3), (x.shape[0], 10))

    def run(variables):
        def loss(params):
            return jnp.sum(weights * apply({**variables, "params": params}, x, **kwargs))

        out = apply(variables, x, **kwargs)
        return out, (jax.grad(loss)(variables["params"]) if with_grads else None)

    return jax.jit(run)(variables)


@pytest.mark.parametrize("backend", ["aqt", "reference"])
def test_quantize_any_equals_quantized_model_on_lenet5(backend):
    model = get_model("lenet5")
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    variables = random_variables(model, x)
    bits = bit_allocation(model.layer_specs())
    ours = outputs_and_gradients(quantize_any(model, bits, backend=backend).apply, variables, x, {})
    theirs = outputs_and_gradients(
        quantized_model(model, bits, backend=backend).apply, variables, x, {}
    )
    jax.tree.map(close, ours, theirs)


@pytest.mark.parametrize("backend", ["aqt", "reference", "qwix"])
@pytest.mark.parametrize("name", list(USER_MODELS))
def test_quantize_any_equals_fake_quantized_reference(name, backend):
    """Outputs equal the plain model's on fake-quantized kernels; gradients (QAT) equal the
    straight-through ones: the float model's gradient at the quantized kernels (qwix: outputs)."""
    model, x, variables, kwargs, specs, _ = setup_model(name)
    bits = bit_allocation(specs)
    with_grads = backend != "qwix"
    out, grads = outputs_and_gradients(
        quantize_any(model, bits, backend=backend).apply, variables, x, kwargs, with_grads
    )

    def reference_apply(v, x, **kw):
        return model.apply(with_kernels(v, bits, straight_through), x, **kw)

    expected, expected_grads = outputs_and_gradients(
        reference_apply, variables, x, kwargs, with_grads
    )
    close(out, expected)
    # Quantization took place: at 3 to 8 bits the float model answers differently.
    float_out = jax.jit(functools.partial(model.apply, **kwargs))(variables, x)
    assert float(jnp.max(jnp.abs(out - float_out))) > 1e-4
    if with_grads:
        jax.tree.map(close, grads, expected_grads)
        for spec in specs:
            kernel_grad = by_layer(grads)[spec.name]["kernel"]
            assert float(jnp.max(jnp.abs(kernel_grad))) > 0, spec.name


def test_quantize_any_checks_layer_names_and_groups():
    model, x, variables, _, _, _ = setup_model("sequential")
    with pytest.raises(ValueError, match="never calls"):
        quantize_any(model, {"Conv_0": 4}).apply(variables, x)
    with pytest.raises(ValueError, match="bit width 1"):
        quantize_any(model, {"layers_0": 1})

    grouped = nn.Sequential([nn.Conv(4, (3, 3), feature_group_count=2), jnp.ravel])
    x = jnp.ones((1, 5, 5, 4))
    variables = random_variables(grouped, x)
    with pytest.raises(ValueError, match="'layers_0' is a grouped convolution"):
        quantize_any(grouped, {"layers_0": 4}).apply(variables, x)


class TrainsByDefault(nn.Module):
    """A user model whose ``train`` defaults to True (BatchNorm updates its statistics)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_inference_kwargs_look_through_the_wrappers():
    """``Narrowed`` and ``InterceptQuantized`` take ``(*args, **kwargs)``; inference mode must
    still reach the model inside, or its BatchNorm would try to update statistics."""
    model = TrainsByDefault()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2))
    variables = random_variables(model, x, train=False)
    specs = discover_layer_specs(model, x, train=False)
    keep = {"Conv_0": np.array([True, False, True, True])}
    narrow, narrow_variables = shrink_any(model, variables, keep, x, train=False)
    both = quantize_any(narrow, {"Conv_0": 4, "Dense_0": 8}, backend="reference")
    for wrapped in (narrow, quantize_any(model, {"Conv_0": 4}), both):
        assert unwrap(wrapped) is model
        assert inference_kwargs(wrapped) == {"train": False}
    assert inference_kwargs(model) == {"train": False}
    assert inference_kwargs(user_models.sequential_cnn()) == {}

    masked = masked_outputs(model, specs, variables, keep, x, {"train": False})
    close(narrow.apply(narrow_variables, x, **inference_kwargs(narrow)), masked)
    out = both.apply(narrow_variables, x, **inference_kwargs(both))  # no batch_stats update.
    assert out.shape == (2, 3)


# --- shrink_any -------------------------------------------------------------------------------


def random_masks(specs, variables, skip, seed=0):
    """A keep-mask for every non-classifier layer outside ``skip`` (one per tied group)."""
    rng = np.random.default_rng(seed)
    params = by_layer(variables["params"])
    masks, by_group = {}, {}
    for spec in specs:
        group = spec.tied_group or spec.name
        if spec.is_classifier or group in skip:
            continue
        if group not in by_group:
            keep = rng.random(params[spec.name]["kernel"].shape[-1]) < 0.6
            keep[rng.integers(keep.size)] = True
            by_group[group] = keep
        masks[spec.name] = by_group[group]
    return masks


def masked_outputs(model, specs, variables, masks, x, kwargs):
    return model.apply(mask_variables(specs, variables, masks), x, **kwargs)


def zeroed_outputs(model, specs, variables, masks, x, kwargs):
    """The plain model with each removed unit's output zeroed where its layer (or the layer's
    BatchNorm) computes it: no consumers, slices or variables involved."""
    keep = {name: jnp.asarray(m, jnp.float32) for name, m in masks.items()}
    keep |= {s.bn: keep[s.name] for s in specs if s.bn is not None and s.name in keep}

    def zero(next_fun, args, call_kwargs, context):
        out = next_fun(*args, **call_kwargs)
        name = "/".join(context.module.path)
        if context.method_name == "__call__" and name in keep:
            return out * keep[name]
        return out

    with nn.intercept_methods(zero):
        return model.apply(variables, x, **kwargs)


@pytest.mark.parametrize("name", list(USER_MODELS))
def test_shrink_any_equals_masked_model(name):
    model, x, variables, kwargs, specs, skip = setup_model(name)
    masks = random_masks(specs, variables, skip)
    assert any(not m.all() for m in masks.values())
    narrow, narrow_variables = shrink_any(model, variables, masks, x, **kwargs)

    masked = masked_outputs(model, specs, variables, masks, x, kwargs)
    close(masked, zeroed_outputs(model, specs, variables, masks, x, kwargs))
    close(narrow.apply(narrow_variables, x, **kwargs), masked)
    narrow_params = narrow_variables["params"]
    for layer, keep in masks.items():
        assert layer_variables(narrow_params, layer)["kernel"].shape[-1] == keep.sum()

    # Kept parameters: what the structured mask leaves, counted by params_mask.
    mask = params_mask(specs, variables["params"], masks)
    kept = sum(int(np.sum(np.asarray(leaf))) for leaf in jax.tree.leaves(mask))
    assert count_params(narrow_variables["params"]) == kept < count_params(variables["params"])
    costs = traced_layer_costs(narrow, narrow_variables, specs, x, **kwargs)
    for spec in specs:
        modules = [spec.name] + ([spec.bn] if spec.bn else [])
        expected = sum(
            int(np.sum(np.asarray(leaf)))
            for m in modules
            for leaf in jax.tree.leaves(layer_variables(mask, m))
        )
        assert costs[spec.name]["params"] == expected, spec.name


def test_shrink_any_slices_a_concatenation_at_each_branch_offset():
    # mix reads concatenate([branch_a (6), branch_b (4)]): its kept input rows are branch_a's
    # kept channels then branch_b's, in that order.
    model, x, variables, _, _, _ = setup_model("branchy")
    keep_a, keep_b = np.arange(6) % 2 == 0, np.arange(4) >= 2
    masks = {"branch_a": keep_a, "branch_b": keep_b}
    _, narrow_variables = shrink_any(model, variables, masks, x)
    full = np.asarray(variables["params"]["mix"]["kernel"])
    narrow = np.asarray(narrow_variables["params"]["mix"]["kernel"])
    np.testing.assert_array_equal(narrow, full[:, :, np.concatenate([keep_a, keep_b]), :])


def test_shrink_any_sequential_costs_by_hand():
    model, x, variables, kwargs, specs, _ = setup_model("sequential")
    k0, k3, k7 = (np.arange(8) % 3 != 0), (np.arange(16) % 4 == 1), (np.arange(32) < 5)
    masks = {"layers_0": k0, "layers_3": k3, "layers_7": k7}
    narrow, narrow_variables = shrink_any(model, variables, masks, x, **kwargs)
    close(
        narrow.apply(narrow_variables, x), masked_outputs(model, specs, variables, masks, x, kwargs)
    )
    c0, c3, c7 = int(k0.sum()), int(k3.sum()), int(k7.sum())
    # 8x8x1 input; conv (SAME) at 8x8, max-pool to 4x4, conv at 4x4 + BatchNorm, flatten, dense.
    expected = {
        "layers_0": {"params": 9 * 1 * c0 + c0, "flops": 2 * 64 * 9 * 1 * c0},
        "layers_3": {"params": 9 * c0 * c3 + c3 + 2 * c3, "flops": 2 * 16 * 9 * c0 * c3},
        "layers_7": {"params": 16 * c3 * c7 + c7, "flops": 2 * 16 * c3 * c7},
        "layers_9": {"params": c7 * 10 + 10, "flops": 2 * c7 * 10},
    }
    assert traced_layer_costs(narrow, narrow_variables, specs, x) == expected
    total = sum(c["params"] for c in expected.values())
    assert count_params(narrow_variables["params"]) == total


def test_shrink_any_equals_zoo_shrink_on_lenet5():
    model = get_model("lenet5")
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    variables = random_variables(model, x)
    specs = model.layer_specs()
    masks = random_masks(specs, variables, set(), seed=1)
    narrow, narrow_variables = shrink_any(model, variables, masks, x, specs=specs)
    zoo, zoo_variables = shrink(model, variables, masks)
    jax.tree.map(np.testing.assert_array_equal, narrow_variables, zoo_variables)
    close(narrow.apply(narrow_variables, x), zoo.apply(zoo_variables, x))
    assert traced_layer_costs(narrow, narrow_variables, specs, x) == layer_costs(
        zoo, zoo_variables, x.shape[1:]
    )


def test_shrink_any_names_what_it_cannot_follow():
    model, x, variables, kwargs, specs, _ = setup_model("branchy")
    masks = random_masks(specs, variables, set())
    keep_all = {name: np.ones_like(m) for name, m in masks.items()}
    with pytest.raises(ValueError, match="classifier 'head'"):
        shrink_any(model, variables, {**keep_all, "head": np.arange(10) < 5}, x)

    model, x, variables, kwargs, specs, _ = setup_model("small_resnet")
    masks = random_masks(specs, variables, set())
    # The stem's group reaches ResidualBlock_0 narrower than its hard-coded 8 features, so the
    # block's own code (`if x.shape[-1] != self.features`) calls a projection the full model
    # does not have: a property of the model code, named with the module and the layer.
    width = int(masks["Conv_0"].sum())
    message = (
        "calls layer 'ResidualBlock_0/Conv_2', which the full model does not: the code of module "
        f"'ResidualBlock_0' takes another path when its input has {width} channels"
    )
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        shrink_any(model, variables, masks, x, **kwargs)
    assert "layer(s) ['Conv_0'] feed it narrowed" in str(info.value)
    with pytest.raises(ValueError, match="tied layers"):
        shrink_any(model, variables, {"Conv_0": masks["Conv_0"]}, x, **kwargs)


class JoinsInput(nn.Module):
    """conv1's channels are concatenated with the input before conv2 (a DenseNet-style join)."""

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        y = nn.Conv(4, (3, 3), name="conv2")(jnp.concatenate([x, y], axis=-1))
        return nn.Dense(10, name="head")(y.reshape((y.shape[0], -1)))


def test_shrink_any_slices_a_join_with_the_input():
    # conv2 reads [input (3), conv1 (8)]: conv1's channels start at 3, the input's stay whole.
    model, x = JoinsInput(), jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    variables = random_variables(model, x)
    specs = discover_layer_specs(model, x)
    masks = {"conv1": np.arange(8) % 3 != 1}
    narrow, narrow_variables = shrink_any(model, variables, masks, x)
    rows = np.concatenate([np.ones(3, bool), masks["conv1"]])
    np.testing.assert_array_equal(
        narrow_variables["params"]["conv2"]["kernel"],
        np.asarray(variables["params"]["conv2"]["kernel"])[:, :, rows, :],
    )
    masked = masked_outputs(model, specs, variables, masks, x, {})
    close(masked, zeroed_outputs(model, specs, variables, masks, x, {}))
    close(narrow.apply(narrow_variables, x), masked)


# --- the whole chain on nested variables --------------------------------------------------------


def test_nested_model_scoring_pruning_and_sharing():
    """NestedResNet's layers live two submodules deep; every function takes its own nested
    variables and names layers by module path."""
    model, x, variables, kwargs, specs, _ = setup_model("nested_resnet")
    names = [s.name for s in specs]
    assert "Stage_0/ShapeComparingBlock_1/Conv_0" in names
    data = (np.asarray(x), np.array([1, 7], np.int32))

    # A unit whose kernel slice and bias are zero outputs 0 at every input: every criterion
    # scores it 0 at its own layer, where it scored > 0 before (a misplaced lookup moves the 0).
    dead = {s.name: i % 4 for i, s in enumerate(specs) if not s.is_classifier}
    dead_params = by_layer(variables["params"])
    for name, unit in dead.items():
        for leaf, value in dead_params[name].items():  # kernel [..., units], bias [units]
            value = np.array(value)
            value[..., unit] = 0.0
            dead_params[name] = {**dead_params[name], leaf: jnp.asarray(value)}
    dead_variables = {**variables, "params": nested(dead_params)}
    for criterion in ("magnitude", "deeplift", "taylor"):
        before = xaijax.score(criterion, model, variables, data)
        scores = xaijax.score(criterion, model, dead_variables, data)
        assert sorted(scores) == sorted(before) == sorted(names), criterion
        for name, unit in dead.items():
            assert before[name][unit] > 0 and scores[name][unit] == 0, (criterion, name)

    scores = xaijax.score("deeplift", model, variables, data)
    masks = xaijax.unit_masks(scores, 0.5, specs=specs)
    stem_group = [s.name for s in specs if s.tied_group == "stem"]
    assert len(stem_group) == 3 and all(masks[n].sum() == 4 for n in stem_group)
    narrow, narrow_variables = shrink_any(model, variables, masks, x, **kwargs)
    masked = masked_outputs(model, specs, variables, masks, x, kwargs)
    close(masked, zeroed_outputs(model, specs, variables, masks, x, kwargs))
    close(narrow.apply(narrow_variables, x, **kwargs), masked)
    # The shrunk model quantizes like any other: the narrow model on fake-quantized kernels.
    bits = bit_allocation(specs)
    close(
        quantize_any(narrow, bits, backend="reference").apply(narrow_variables, x, **kwargs),
        narrow.apply(with_kernels(narrow_variables, bits, straight_through), x, **kwargs),
    )

    # Weight sharing of the shrunk model, weighted by its DeepLIFT weight scores, with a weight
    # mask: codebooks keyed by module path, pruned weights exactly zero after decoding.
    weight_scores = xaijax.score("deeplift", narrow, narrow_variables, data, granularity="weight")
    assert set(weight_scores) == set(names)
    keep = xaijax.weight_masks(weight_scores, 0.3, exclude=("head",))
    mask = xaijax.params_mask(specs, narrow_variables["params"], weight_masks=keep)
    shared = xaijax.cluster_params(narrow_variables["params"], 2, weight_scores, mask)
    assert set(shared) == set(names)
    decoded = xaijax.decode(narrow_variables["params"], shared)
    for name in names:
        kernel = np.asarray(layer_variables(decoded, name)["kernel"])
        kept = np.asarray(keep[name]["kernel"])
        assert np.all(kernel[~kept] == 0) and len(np.unique(kernel[kept])) <= 4, name
