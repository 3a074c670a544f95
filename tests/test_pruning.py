"""Pruning: exact mask sparsity, global vs per-layer ranking, tied groups, structured mask coverage,
shrink equivalence, masks surviving fine-tuning, the iterative schedule and bad input."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference_nets import draw_variables

from xaijax import data, importance, models, pruning, training

LENET_SHAPE = (28, 28, 1)
RESNET_SHAPE = (32, 32, 3)


def small_resnet():
    """One block per stage keeps the residual ties and projection shortcuts, and compiles fast."""
    return models.ResNet(blocks_per_stage=1, stage_widths=(8, 16, 16))


def init(model, shape, seed=0):
    """Random variables of the right shapes, drawn with numpy (no compilation): kernels scaled by
    1/sqrt(fan_in), non-trivial biases, BatchNorm scales/offsets and statistics, so a wrong slice or
    mask shows in the outputs."""
    return _init(model, shape, seed)


@functools.cache
def _init(model, shape, seed):
    return draw_variables(model, shape, seed, 0.1)


def zero_params(model, shape):
    """Parameters of the right shapes (for tests that only need shapes)."""
    return jax.tree.map(np.zeros_like, init(model, shape)["params"])


def random_unit_scores(specs, params, seed=0):
    rng = np.random.default_rng(seed)
    return {s.name: rng.random(params[s.name]["kernel"].shape[-1]) for s in specs}


def random_masks(specs, params, keep_fraction, seed=0):
    return pruning.unit_masks(
        random_unit_scores(specs, params, seed), 1 - keep_fraction, specs=specs
    )


# ------------------------------------------------------------------------------------ sparsity


def test_prune_count_is_floor_with_decimal_rounding():
    assert pruning.prune_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floats.
    assert pruning.prune_count(0.5, 7) == 3
    assert pruning.prune_count(0.0, 10) == 0
    assert pruning.prune_count(0.999, 10) == 9


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    min_units=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_layer_scope_prunes_exact_count_of_lowest_scores(sizes, sparsity, min_units, seed):
    specs = tuple(
        models.LayerSpec(f"l{i}", "dense", None, (), None, False) for i in range(len(sizes))
    )
    rng = np.random.default_rng(seed)
    scores = {s.name: rng.random(n) for s, n in zip(specs, sizes, strict=True)}
    masks = pruning.unit_masks(scores, sparsity, specs=specs, min_units=min_units)
    for name, n in zip(scores, sizes, strict=True):
        expected = max(0, min(math.floor(round(sparsity * n, 6)), n - min_units))
        removed = ~masks[name]
        assert removed.sum() == expected
        if 0 < expected < n:
            assert scores[name][removed].max() <= scores[name][~removed].min()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 30), min_size=2, max_size=4),
    sparsity=st.floats(0.0, 0.5),
    seed=st.integers(0, 1000),
    normalize=st.sampled_from(pruning.NORMALIZATIONS),
)
@example(sizes=[2, 2], sparsity=0.5, seed=0, normalize="mean")  # every layer at its floor
def test_global_scope_prunes_exact_total_below_a_threshold(sizes, sparsity, seed, normalize):
    specs = tuple(
        models.LayerSpec(f"l{i}", "dense", None, (), None, False) for i in range(len(sizes))
    )
    rng = np.random.default_rng(seed)
    scores = {
        s.name: rng.random(n) * rng.uniform(0.1, 10) for s, n in zip(specs, sizes, strict=True)
    }
    masks = pruning.unit_masks(scores, sparsity, specs=specs, scope="global", normalize=normalize)
    total = sum(sizes)
    # Unless a layer hit its floor of one unit, exactly floor(s * N) units go; in every layer above
    # its floor, each removed unit ranks at or below each kept one.
    removed = {name: ~m for name, m in masks.items()}
    assert all(m.sum() >= 1 for m in masks.values())
    caps_bind = any(masks[name].sum() == 1 for name in masks)
    if not caps_bind:
        assert sum(r.sum() for r in removed.values()) == pruning.prune_count(sparsity, total)

    def norm(v):
        if normalize == "mean":
            return v / v.mean()
        if normalize == "l2":
            return v / np.linalg.norm(v)
        return v

    # np.empty(0) first: every layer may sit at its floor (sizes [2, 2] at 0.5 keep one each).
    pruned_values = np.concatenate([np.empty(0)] + [norm(scores[n])[removed[n]] for n in scores])
    kept_values = np.concatenate(
        [np.empty(0)] + [norm(scores[n])[~removed[n]] for n in scores if masks[n].sum() > 1]
    )
    if pruned_values.size and kept_values.size:
        assert pruned_values.max() <= kept_values.min() + 1e-12


def test_global_vs_layer_scope():
    specs = (
        models.LayerSpec("small", "dense", None, (), None, False),
        models.LayerSpec("large", "dense", None, (), None, False),
    )
    scores = {"small": np.linspace(0.01, 0.1, 10), "large": np.linspace(1.0, 10.0, 10)}
    layer = pruning.unit_masks(scores, 0.5, specs=specs)
    assert (~layer["small"]).sum() == 5 and (~layer["large"]).sum() == 5
    raw = pruning.unit_masks(scores, 0.5, specs=specs, scope="global", normalize="none")
    # Raw ranking takes all it may from the low-scored layer: 9 (one unit kept), then 1 more.
    assert (~raw["small"]).sum() == 9 and (~raw["large"]).sum() == 1
    # Mean normalisation makes the ranking invariant to a layer's scale: both layers are equal.
    normed = pruning.unit_masks(scores, 0.5, specs=specs, scope="global", normalize="mean")
    scaled = pruning.unit_masks(
        {"small": scores["small"] * 1e3, "large": scores["large"]},
        0.5,
        specs=specs,
        scope="global",
        normalize="mean",
    )
    for name in scores:
        np.testing.assert_array_equal(normed[name], scaled[name])
    assert sum((~m).sum() for m in normed.values()) == 10


def test_previously_pruned_units_stay_pruned():
    specs = (models.LayerSpec("a", "dense", None, (), None, False),)
    first = pruning.unit_masks({"a": np.arange(10.0)}, 0.3, specs=specs)
    # New scores rank the once-pruned units highest; the mask must still only grow.
    second = pruning.unit_masks({"a": np.arange(10.0)[::-1]}, 0.5, specs=specs, pruned=first)
    assert not np.any(second["a"] & ~first["a"])
    assert (~second["a"]).sum() == 5


def test_classifier_excluded_by_default_and_exclude_option():
    model = models.get_model("lenet5")
    specs = model.layer_specs()
    params = init(model, LENET_SHAPE)["params"]
    scores = random_unit_scores(specs, params)
    masks = pruning.unit_masks(scores, 0.5, specs=specs)
    assert masks["fc3"].all() and not masks["fc2"].all()
    masks = pruning.unit_masks(scores, 0.5, specs=specs, exclude=("conv1", "fc3"))
    assert masks["conv1"].all() and masks["fc3"].all() and not masks["conv2"].all()


def test_tied_groups_share_one_mask_from_summed_scores():
    model = small_resnet()
    specs = model.layer_specs()
    params = zero_params(model, RESNET_SHAPE)
    scores = {s.name: np.ones(params[s.name]["kernel"].shape[-1]) for s in specs}
    group = [s.name for s in specs if s.tied_group == "stage1"]
    width = len(scores[group[0]])
    # Channel 0 holds the single lowest score (0 in one layer, 1 elsewhere); channel 1 is 0.4 in
    # every layer. Summing over the group (2 layers here) ranks channel 1 lowest (0.8 < 1.0).
    for name in group:
        scores[name] = scores[name].copy()
        scores[name][1] = 0.4
    scores[group[0]][0] = 0.0
    masks = pruning.unit_masks(scores, 1 / width, specs=specs)
    for name in group:
        assert masks[name].tolist() == [True, False] + [True] * (width - 2)
    for group_name in ("stage1", "stage2", "stage3"):
        tied = [masks[s.name] for s in specs if s.tied_group == group_name]
        assert all(np.array_equal(t, tied[0]) for t in tied)


def test_weight_masks_exact_sparsity_and_exclude():
    rng = np.random.default_rng(0)
    scores = {"a": {"kernel": rng.random((4, 5))}, "b": {"kernel": rng.random((3, 3, 2))}}
    masks = pruning.weight_masks(scores, 0.6, exclude=("b",))
    assert (~masks["a"]["kernel"]).sum() == 12 and masks["b"]["kernel"].all()
    removed = ~masks["a"]["kernel"]
    assert scores["a"]["kernel"][removed].max() <= scores["a"]["kernel"][~removed].min()
    masks = pruning.weight_masks(scores, 0.5, scope="global")
    assert sum((~m["kernel"]).sum() for m in masks.values()) == pruning.prune_count(0.5, 38)


def test_hybrid_masks_prune_conv_filters_and_dense_weights():
    model = models.get_model("lenet5")
    specs = model.layer_specs()
    params = zero_params(model, LENET_SHAPE)
    rng = np.random.default_rng(0)
    units, weights = pruning.masks_by_kind(
        specs,
        granularity="hybrid",
        conv_sparsity=0.5,
        dense_sparsity=0.9,
        unit_scores=random_unit_scores(specs, params),
        weight_scores={
            s.name: {"kernel": rng.random(params[s.name]["kernel"].shape)} for s in specs
        },
    )
    assert [int((~units[n]).sum()) for n in ("conv1", "conv2")] == [3, 8]
    assert all(units[n].all() for n in ("fc1", "fc2", "fc3"))
    for name in ("fc1", "fc2"):
        kernel = weights[name]["kernel"]
        assert (~kernel).sum() == pruning.prune_count(0.9, kernel.size)
    assert all(weights[n]["kernel"].all() for n in ("conv1", "conv2", "fc3"))
    with pytest.raises(ValueError, match="weight scores"):
        pruning.masks_by_kind(
            specs, granularity="weight", conv_sparsity=0.5, dense_sparsity=0.5, unit_scores={}
        )


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity(sparsity):
    specs = (models.LayerSpec("a", "dense", None, (), None, False),)
    with pytest.raises(ValueError, match="sparsity"):
        pruning.unit_masks({"a": np.ones(4)}, sparsity, specs=specs)
    with pytest.raises(ValueError, match="sparsity"):
        pruning.weight_masks({"a": {"kernel": np.ones(4)}}, sparsity)


def test_bad_inputs_raise_clear_errors():
    model = models.get_model("lenet5")
    specs = model.layer_specs()
    params = init(model, LENET_SHAPE)["params"]
    scores = random_unit_scores(specs, params)
    with pytest.raises(TypeError, match="sparsity"):
        pruning.unit_masks(scores, "half", specs=specs)
    with pytest.raises(ValueError, match="unknown layers"):
        pruning.unit_masks({**scores, "conv9": np.ones(3)}, 0.5, specs=specs)
    with pytest.raises(ValueError, match="miss"):
        pruning.unit_masks({k: v for k, v in scores.items() if k != "conv2"}, 0.5, specs=specs)
    with pytest.raises(ValueError, match="1-D"):
        pruning.unit_masks({**scores, "conv1": np.ones((2, 3))}, 0.5, specs=specs)
    with pytest.raises(ValueError, match="non-negative"):
        pruning.unit_masks({**scores, "conv1": -np.ones(6)}, 0.5, specs=specs)
    with pytest.raises(ValueError, match="scope"):
        pruning.unit_masks(scores, 0.5, specs=specs, scope="network")
    with pytest.raises(ValueError, match="unknown layers"):
        pruning.unit_masks(scores, 0.5, specs=specs, exclude=("head",))
    with pytest.raises(ValueError, match="scope='layer'"):
        pruning.unit_masks(scores, {"conv1": 0.5}, specs=specs, scope="global")
    masks = pruning.unit_masks(scores, 0.5, specs=specs)
    with pytest.raises(ValueError, match="shape"):
        pruning.params_mask(specs, params, {**masks, "conv1": np.ones(5, bool)})
    with pytest.raises(ValueError, match="unknown layers"):
        pruning.params_mask(specs, params, {"conv7": np.ones(6, bool)})
    with pytest.raises(ValueError, match="classifier"):
        pruning.shrink(model, {"params": params}, {**masks, "fc3": np.arange(10) > 0})
    with pytest.raises(ValueError, match="every unit"):
        pruning.shrink(model, {"params": params}, {**masks, "conv1": np.zeros(6, bool)})


def test_tied_masks_must_agree():
    model = small_resnet()
    specs = model.layer_specs()
    params = zero_params(model, RESNET_SHAPE)
    masks = random_masks(specs, params, 0.5)
    masks["conv1"] = ~masks["conv1"]
    with pytest.raises(ValueError, match="tied"):
        pruning.params_mask(specs, params, masks)


# ------------------------------------------------------------------------------------ masks


def test_structured_mask_covers_slice_bias_batchnorm_and_consumer_inputs():
    model = models.get_model("vgg_small")
    specs = model.layer_specs()
    params = init(model, LENET_SHAPE)["params"]
    masks = {s.name: np.ones(params[s.name]["kernel"].shape[-1], bool) for s in specs}
    masks["conv2"] = masks["conv2"].copy()
    masks["conv2"][[3, 7]] = False
    masks["conv4"] = masks["conv4"].copy()
    masks["conv4"][5] = False
    mask = pruning.params_mask(specs, params, masks)
    expected = jax.tree.map(lambda p: np.ones(p.shape), params)
    for channel in (3, 7):
        expected["conv2"]["kernel"][..., channel] = 0
        expected["conv2"]["bias"][channel] = 0
        expected["conv2_bn"]["scale"][channel] = 0
        expected["conv2_bn"]["bias"][channel] = 0
        expected["conv3"]["kernel"][:, :, channel, :] = 0
    expected["conv4"]["kernel"][..., 5] = 0
    expected["conv4"]["bias"][5] = 0
    expected["conv4_bn"]["scale"][5] = 0
    expected["conv4_bn"]["bias"][5] = 0
    rows = np.arange(params["fc1"]["kernel"].shape[0])
    expected["fc1"]["kernel"][rows % 64 == 5, :] = 0  # NHWC flatten: row % C is the channel.
    jax.tree.map(np.testing.assert_array_equal, mask, expected)
    assert jax.tree.map(lambda m, p: m.dtype == p.dtype, mask, params)


def masked_and_narrow_outputs(name, shape, keep_fraction, seed):
    model = small_resnet() if name == "resnet" else models.get_model(name)
    variables = init(model, shape, seed)
    specs = model.layer_specs()
    masks = random_masks(specs, variables["params"], keep_fraction, seed)
    masked = pruning.mask_variables(specs, variables, masks)
    narrow, narrow_variables = pruning.shrink(model, variables, masks)
    x = jax.random.normal(jax.random.key(seed + 100), (3, *shape))
    return model, masked, narrow, narrow_variables, masks, x


@pytest.mark.parametrize(
    ("name", "shape"),
    [("lenet5", LENET_SHAPE), ("vgg_small", LENET_SHAPE), ("resnet", RESNET_SHAPE)],
)
def test_shrink_matches_masked_model_and_reduces_costs(name, shape):
    model, masked, narrow, narrow_variables, masks, x = masked_and_narrow_outputs(
        name, shape, 0.6, seed=3
    )
    expected = jax.jit(model.apply)(masked, x)
    got = jax.jit(narrow.apply)(narrow_variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.abs(expected).max()))
    for spec in model.layer_specs():
        assert narrow_variables["params"][spec.name]["kernel"].shape[-1] == masks[spec.name].sum()
    mask = pruning.params_mask(model.layer_specs(), masked["params"], masks)
    narrow_costs = models.layer_costs(narrow, narrow_variables, shape)
    assert pruning.masked_costs(model, masked, mask, shape) == narrow_costs
    before = pruning.total_costs(models.layer_costs(model, masked, shape))
    after = pruning.total_costs(narrow_costs)
    assert after["params"] < before["params"] and after["flops"] < before["flops"]
    assert models.count_params(narrow_variables["params"]) < models.count_params(masked["params"])


def test_masked_batchnorm_channel_outputs_exactly_zero():
    model = models.get_model("vgg_small")
    variables = init(model, LENET_SHAPE)
    specs = model.layer_specs()
    masks = random_masks(specs, variables["params"], 0.5, seed=4)
    masked = pruning.mask_variables(specs, variables, masks)

    def is_bn(module, method):
        return method == "__call__" and module.name == "conv1_bn"

    x = jax.random.normal(jax.random.key(5), (2, *LENET_SHAPE))
    _, state = model.apply(masked, x, train=False, capture_intermediates=is_bn)
    out = state["intermediates"]["conv1_bn"]["__call__"][0]
    assert np.all(np.asarray(out)[..., ~masks["conv1"]] == 0)
    assert np.any(np.asarray(out)[..., masks["conv1"]] != 0)


# ------------------------------------------------------------------------------------ fine-tuning


def synthetic(n=64, seed=0):
    ds = data.make_synthetic(n, image_shape=LENET_SHAPE, seed=seed)
    return ds


def test_pruned_weights_stay_zero_through_fit(tmp_path):
    model = models.get_model("vgg_small")  # BatchNorm, flatten consumer, conv and dense layers.
    variables = init(model, LENET_SHAPE)
    specs = model.layer_specs()
    unit = random_masks(specs, variables["params"], 0.5)
    weight_scores = jax.tree.map(
        lambda k: np.random.default_rng(1).random(k.shape),
        {s.name: {"kernel": variables["params"][s.name]["kernel"]} for s in specs},
    )
    weight = pruning.weight_masks(weight_scores, 0.5)
    mask = pruning.params_mask(specs, variables["params"], unit, weight_masks=weight)
    masked = pruning.mask_variables(specs, variables, unit, weight_masks=weight)
    tx = optax.chain(optax.adam(1e-2), pruning.keep_pruned(mask))
    state = training.create_train_state(model, tx, 0, (1, *LENET_SHAPE), variables=masked)
    ds = synthetic()
    state, _ = training.fit(state, ds, None, workdir=tmp_path, epochs=2, batch_size=16)
    # Resumed from its checkpoint (the mask restored with the optimizer state), it keeps going.
    again = training.create_train_state(model, tx, 0, (1, *LENET_SHAPE), variables=masked)
    resumed, _ = training.fit(again, ds, None, workdir=tmp_path, epochs=3, batch_size=16)
    restored_mask = resumed.opt_state[1].mask
    jax.tree.map(np.testing.assert_array_equal, restored_mask, jax.tree.map(np.asarray, mask))
    state = resumed
    params = jax.device_get(state.params)
    zero = jax.tree.map(lambda m: np.asarray(m) == 0, mask)
    jax.tree.map(lambda p, z: np.testing.assert_array_equal(np.asarray(p)[z], 0.0), params, zero)
    moved = jax.tree.map(
        lambda p, q, z: bool(np.any(np.asarray(p)[~z] != np.asarray(q)[~z])),
        params,
        masked["params"],
        zero,
    )
    assert all(jax.tree.leaves(moved))


def test_iterative_prune_grows_masks_to_target():
    model = models.get_model("lenet5")
    variables = init(model, LENET_SHAPE)
    specs = model.layer_specs()
    ds = synthetic(32)
    seen_masks = []

    def finetune(current, mask):
        seen_masks.append(mask)
        tx = optax.chain(optax.sgd(1e-2), pruning.keep_pruned(mask))
        state = training.create_train_state(model, tx, 0, (1, *LENET_SHAPE), variables=current)
        for i in range(2):
            state, _ = training.train_step(
                state, ds.images[i * 16 : (i + 1) * 16], ds.labels[i * 16 : (i + 1) * 16]
            )
        return state.variables

    def score_fn(current, granularity):
        return importance.score("magnitude", model, current, granularity=granularity)

    result = pruning.iterative_prune(
        variables,
        specs=specs,
        score_fn=score_fn,
        finetune_fn=finetune,
        target_sparsity=0.5,
        num_steps=3,
    )
    assert [h["step"] for h in result.history] == [1, 2, 3]
    for earlier, later in itertools.pairwise(seen_masks):
        for e, lt in zip(jax.tree.leaves(earlier), jax.tree.leaves(later), strict=True):
            assert not np.any((np.asarray(lt) != 0) & (np.asarray(e) == 0))
    for spec in specs:
        n = variables["params"][spec.name]["kernel"].shape[-1]
        expected = 0 if spec.is_classifier else math.floor(0.5 * n)
        assert (~result.unit_masks[spec.name]).sum() == expected
    zero = jax.tree.map(lambda m: np.asarray(m) == 0, result.params_mask)
    jax.tree.map(
        lambda p, z: np.testing.assert_array_equal(np.asarray(p)[z], 0.0),
        result.variables["params"],
        zero,
    )


def test_match_sparsity_finds_the_budget_step_from_below():
    steps = np.array([100, 90, 90, 75, 60, 40, 40, 10])  # kept at sparsity in [i/8, (i+1)/8)
    count_at = lambda s: int(steps[min(int(s * 8), 7)])
    for budget, expected in ((100, 100), (95, 90), (90, 90), (74, 60), (10, 10)):
        sparsity = pruning.match_sparsity(count_at, budget, "test")
        assert count_at(sparsity) == expected
        assert sparsity == 0 or count_at(np.nextafter(sparsity, 0) - 1e-12) > budget
    with pytest.raises(ValueError, match="budget of 5 parameters cannot be met"):
        pruning.match_sparsity(count_at, 5, "test")


@pytest.mark.parametrize("granularity", ["hybrid", "unit"])
def test_param_budget_gives_every_criterion_the_same_size(granularity):
    """Criteria that remove different units keep different parameter counts at one sparsity;
    with a parameter budget each keeps at most the budget, all within one step of each other."""
    model = models.get_model("lenet5")
    variables = init(model, LENET_SHAPE)
    specs = model.layer_specs()
    ds = synthetic(32)
    budget = 6000
    kept = {}
    for criterion in ("magnitude", "taylor", "random"):

        def score_fn(current, kind, criterion=criterion):
            return importance.score(criterion, model, current, ds, granularity=kind, seed=1)

        result = pruning.iterative_prune(
            variables,
            specs=specs,
            score_fn=score_fn,
            finetune_fn=lambda current, mask: current,
            conv_sparsity=0.5,
            dense_sparsity=0.9,
            granularity=granularity,
            num_steps=2,
            param_budget=budget,
        )
        kept[criterion] = pruning.nonzero_count(result.variables["params"])
        assert kept[criterion] == result.history[-1]["kept_params"] <= budget
    # One step of the kept count: a dense weight (hybrid), or one dense unit with its incoming
    # weights, bias and outgoing weights (unit), bounded by the widest fan-in + 1 + fan-out.
    shapes = [variables["params"][s.name]["kernel"].shape for s in specs if s.kind == "dense"]
    widest = max(int(np.prod(shape[:-1])) for shape in shapes) + 1 + max(s[-1] for s in shapes)
    step = 1 if granularity == "hybrid" else widest
    assert max(kept.values()) - min(kept.values()) < step, kept


def test_sparsity_schedule():
    linear = pruning.sparsity_schedule(0.8, 4)
    np.testing.assert_allclose(linear, [0.2, 0.4, 0.6, 0.8])
    cubic = pruning.sparsity_schedule(0.8, 4, "cubic")
    assert cubic[-1] == pytest.approx(0.8) and all(np.diff(cubic) > 0)
    assert cubic[0] > linear[0]  # Cubic prunes fast early, slowly near the target.
    with pytest.raises(ValueError, match="num_steps"):
        pruning.sparsity_schedule(0.5, 0)


# ------------------------------------------------------------------------------------------------
# The pruning experiment and the sweep in process (xaijax.experiments.prune, .sweep), on digits
# ------------------------------------------------------------------------------------------------

TINY_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}


def digits_smoke_config(prune_fields):
    """configs/digits_smoke.py with tiny widths and a ``prune`` section."""
    import importlib.util
    from pathlib import Path

    import ml_collections

    path = Path(__file__).resolve().parents[1] / "configs" / "digits_smoke.py"
    spec = importlib.util.spec_from_file_location("digits_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.widths = TINY_WIDTHS
    config.prune = ml_collections.ConfigDict(
        {"importance": {"num_examples": 64}, "finetune_epochs": 1, **prune_fields}
    )
    return config


def tiny_digits_model():
    """The tiny VGG and random variables (no baseline training: the tests check bookkeeping)."""
    model = training.model_from_config(digits_smoke_config({}))
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    return model, variables


def test_sweep_rows_plots_and_resume(tmp_path, monkeypatch):
    from xaijax.experiments import common
    from xaijax.experiments import sweep as sweep_experiment

    config = digits_smoke_config({})
    model, variables = tiny_digits_model()
    sparsities = (0.3, 0.6)
    kwargs = dict(
        criteria=("deeplift", "magnitude"), sparsities=sparsities, granularities=("unit",)
    )
    rows = sweep_experiment.sweep(config, tmp_path, model=model, variables=variables, **kwargs)

    csv_path = tmp_path / "sweep.csv"
    assert sweep_experiment.read_sweep_rows(csv_path) == rows
    assert [(r["criterion"], r["sparsity"]) for r in rows] == [
        (c, s) for c in ("deeplift", "magnitude") for s in sparsities
    ]
    for criterion in ("deeplift", "magnitude"):
        mine = [r for r in rows if r["criterion"] == criterion]
        assert mine[0]["flops_dense"] > mine[0]["flops"] > mine[1]["flops"]
        assert mine[0]["params_dense"] > mine[0]["params"] > mine[1]["params"]
        assert mine[0]["size_bits_dense"] > mine[0]["size_bits"] > mine[1]["size_bits"]
    for row in rows:
        for key in ("accuracy_dense", "accuracy_before_finetune", "accuracy_after_finetune"):
            assert 0 <= row[key] <= 1
        assert 0 < row["kernel_sparsity"] < 1
    pngs = [tmp_path / f"sweep_unit_{axis}.png" for axis in ("sparsity", "flops")]
    assert all(p.stat().st_size > 0 for p in pngs)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished sweep point was recomputed")

    monkeypatch.setattr(sweep_experiment, "score_fn", must_not_run)
    monkeypatch.setattr(sweep_experiment, "finetune_fn", must_not_run)
    monkeypatch.setattr(common, "evaluate_test", must_not_run)
    monkeypatch.setattr(common, "load_or_train", must_not_run)
    written = csv_path.stat().st_mtime_ns
    same_start = {"model": model, "variables": variables}
    assert sweep_experiment.sweep(config, tmp_path, **same_start, **kwargs) == rows
    assert csv_path.stat().st_mtime_ns == written

    with pytest.raises(ValueError, match="sparsities"):
        sweep_experiment.sweep(config, tmp_path, **{**kwargs, "sparsities": (1.0,)})
    with pytest.raises(ValueError, match="criterion"):
        sweep_experiment.sweep(config, tmp_path, **{**kwargs, "criteria": ("nope",)})


def test_prune_run_structured_shrunk_model_equals_masked_model(tmp_path):
    from xaijax.experiments import common
    from xaijax.experiments import prune as prune_experiment

    config = digits_smoke_config(
        {
            "criterion": "deeplift",
            "granularity": "unit",
            "conv_sparsity": 0.5,
            "dense_sparsity": 0.5,
        }
    )
    model, variables = tiny_digits_model()
    results = prune_experiment.run(config, tmp_path, model=model, variables=variables)

    narrow, narrow_variables = prune_experiment.load_result(model, tmp_path)
    masked = common.load_variables(tmp_path / "pruned_variables")
    for spec in model.layer_specs():
        width = narrow_variables["params"][spec.name]["kernel"].shape[-1]
        assert width == results["shrunk"]["widths"][spec.name]
        dense_width = variables["params"][spec.name]["kernel"].shape[-1]
        assert width == (dense_width if spec.is_classifier else dense_width - dense_width // 2)
    x = training.datasets_from_config(config).test.images[:32]
    expected = model.apply(masked, x, train=False)
    got = narrow.apply(narrow_variables, x, train=False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.abs(expected).max()))

    assert results["nonzero_params"] == pruning.nonzero_count(masked["params"])
    assert results["nonzero_params"] < models.count_params(variables["params"])
    assert results["size_bits"]["pruned"] < results["size_bits"]["dense"]
    assert results["shrunk"]["params"] < results["params"]["dense"]
    assert 0 <= results["accuracy"]["after_finetune"] <= 1
