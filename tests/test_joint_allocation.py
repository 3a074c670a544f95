"""Joint pruning and bit allocation: the exact solve vs brute force, the byte accounting by hand,
the damage tables' properties and their agreement with the masks, and the stage end to end."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xaijax import models, pruning
from xaijax.quantization import (
    Choice,
    InfeasibleBudgetError,
    LayerGeometry,
    deeplift_sensitivity,
    hessian_sensitivity,
    joint,
    joint_damage,
    model_size_bytes,
)

TINY_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16}


def tiny_model():
    model = models.get_model("vgg_small", widths=TINY_WIDTHS)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    return model, variables


def random_instance(seed: int, rows: int):
    """Random integer costs and damage over 3 levels x 3 widths; the last row has 3 choices only
    (a layer that is not pruned)."""
    rng = np.random.default_rng(seed)
    costs, damage = {}, {}
    for r in range(rows):
        levels = (0.0,) if r == rows - 1 else (0.0, 0.5, 0.75)
        choices = [Choice(p, b) for p in levels for b in (2, 4, 8)]
        costs[f"l{r}"] = {c: int(rng.integers(1, 40)) for c in choices}
        damage[f"l{r}"] = {c: float(rng.integers(0, 20)) for c in choices}
    return costs, damage


def brute_force(costs, damage, capacity):
    best = None
    names = list(costs)
    for combo in itertools.product(*(list(costs[n]) for n in names)):
        cost = sum(costs[n][c] for n, c in zip(names, combo, strict=True))
        value = sum(damage[n][c] for n, c in zip(names, combo, strict=True))
        if cost <= capacity and (best is None or value < best):
            best = value
    return best


@pytest.mark.parametrize("seed", range(8))
def test_solve_joint_equals_brute_force_and_fits(seed):
    costs, damage = random_instance(seed, rows=3 + seed % 2)
    cheapest = sum(min(row.values()) for row in costs.values())
    dearest = sum(max(row.values()) for row in costs.values())
    rng = np.random.default_rng(100 + seed)
    for capacity in {cheapest, int(rng.integers(cheapest, dearest + 1)), dearest}:
        allocation = joint.solve_joint(costs, damage, capacity)
        assert set(allocation) == set(costs)
        assert joint.allocation_cost_bits(costs, allocation) <= capacity
        value = sum(damage[n][c] for n, c in allocation.items())
        assert value == brute_force(costs, damage, capacity)


def brute_force_measured(costs, damage, measure, budget):
    """The least damage of any allocation whose ``measure`` is within ``budget``."""
    names = list(costs)
    best = None
    for combo in itertools.product(*(list(costs[n]) for n in names)):
        allocation = dict(zip(names, combo, strict=True))
        value = sum(damage[n][c] for n, c in allocation.items())
        if measure(allocation) <= budget and (best is None or value < best):
            best = value
    return best


@pytest.mark.parametrize("seed", range(6))
def test_fit_to_budget_finds_the_least_damage_that_measures_within_the_budget(seed):
    """With a measured size that grows with the solver's cost but counts only part of it (as a
    producer's pruned filters shrink its consumer), the bisection reaches the optimum over every
    allocation that *measures* within the budget, not only those whose bound fits."""
    costs, damage = random_instance(seed, rows=3)
    fixed = 5

    def measure(allocation):
        return fixed + (2 * joint.allocation_cost_bits(costs, allocation)) // 3

    cheapest = sum(min(row.values()) for row in costs.values())
    dearest = sum(max(row.values()) for row in costs.values())
    for budget in range(fixed + cheapest, fixed + dearest + 1, 7):
        capacity = budget - fixed
        allocation, found = joint.fit_to_budget(
            lambda c: joint.solve_joint(costs, damage, c),
            measure,
            costs,
            capacity,
            budget,
            tolerance=0.0,
        )
        assert found >= capacity and measure(allocation) <= budget
        value = sum(damage[n][c] for n, c in allocation.items())
        assert value == brute_force_measured(costs, damage, measure, budget)
        assert value <= brute_force(costs, damage, capacity)  # never worse than the bound's


def test_fit_to_budget_keeps_the_bound_when_it_is_the_size_and_refuses_a_bad_start():
    costs, damage = random_instance(3, rows=3)
    capacity = sum(min(row.values()) for row in costs.values()) + 20

    def solve(c):
        return joint.solve_joint(costs, damage, c)

    def bound(allocation):
        return joint.allocation_cost_bits(costs, allocation)

    allocation, found = joint.fit_to_budget(solve, bound, costs, capacity, capacity)
    assert bound(allocation) <= capacity and capacity <= found
    assert sum(damage[n][c] for n, c in allocation.items()) == brute_force(costs, damage, capacity)
    with pytest.raises(ValueError, match="more than the budget"):
        joint.fit_to_budget(solve, lambda a: bound(a) + 1_000, costs, capacity, capacity)


@pytest.mark.parametrize("seed", range(4))
def test_improve_within_budget_ends_at_a_fitting_local_optimum(seed):
    """From the cheapest allocation, greedy single-layer changes: the damage only falls, the
    measured size stays within the budget, and no single change that fits lowers it further."""
    costs, damage = random_instance(seed, rows=3)

    def measure(allocation):
        return (2 * joint.allocation_cost_bits(costs, allocation)) // 3

    def total(allocation):
        return sum(damage[n][c] for n, c in allocation.items())

    start = {n: min(row, key=row.get) for n, row in costs.items()}
    budget = measure(start) + 15
    improved = joint.improve_within_budget(start, costs, damage, measure, budget)
    assert measure(improved) <= budget and total(improved) <= total(start)
    for name, row in costs.items():
        for choice in row:
            moved = {**improved, name: choice}
            assert measure(moved) > budget or total(moved) >= total(improved)
    with pytest.raises(ValueError, match="more than the budget"):
        joint.improve_within_budget(start, costs, damage, measure, measure(start) - 1)


def test_solve_joint_raises_when_the_cheapest_choice_does_not_fit():
    costs, damage = random_instance(0, rows=3)
    cheapest = sum(min(row.values()) for row in costs.values())
    with pytest.raises(InfeasibleBudgetError, match="cheapest choice"):
        joint.solve_joint(costs, damage, cheapest - 1)
    geometry = {n: LayerGeometry(n, "dense", None, 1, 1, 0) for n in costs}
    with pytest.raises(InfeasibleBudgetError):
        joint.uniform_joint(geometry, costs, cheapest - 1, (0.0,), (2, 4, 8))
    with pytest.raises(InfeasibleBudgetError, match="outside the layers"):
        joint.capacity_bits(1.0, fixed=9)
    del damage["l1"][Choice(0.5, 4)]
    with pytest.raises(ValueError, match=r"damage\['l1'\] misses"):
        joint.solve_joint(costs, damage, 10**6)


def test_uniform_is_the_largest_single_pair_that_fits():
    model, variables = tiny_model()
    specs, params = model.layer_specs(), variables["params"]
    geometry = joint.layer_geometry(specs, params)
    levels, widths = (0.0, 0.5, 0.75), (2, 4, 8)
    costs = joint.cost_table(geometry, levels, widths)
    totals = {
        (p, b): sum(costs[n][Choice(p if g.granularity else 0.0, b)] for n, g in geometry.items())
        for p in levels
        for b in widths
    }
    for capacity in sorted(set(totals.values())):
        allocation = joint.uniform_joint(geometry, costs, capacity, levels, widths)
        pair = (allocation["conv1"].level, allocation["conv1"].bits)
        assert allocation["fc2"] == Choice(0.0, pair[1])  # the classifier is never pruned
        assert len({(c.bits) for c in allocation.values()}) == 1
        assert totals[pair] == max(t for t in totals.values() if t <= capacity)


def test_size_bits_equals_a_hand_count():
    """conv2 keeps 2 of 4 filters at 4 bits, fc1 drops half its weights at 3 bits, the rest is
    whole at 8 bits. Conv layers carry bias + BatchNorm scale and offset (3 floats per unit)."""
    model, variables = tiny_model()
    specs, params = model.layer_specs(), variables["params"]
    geometry = joint.layer_geometry(specs, params)
    allocation = {n: Choice(0.0, 8) for n in geometry}
    allocation["conv2"] = Choice(0.5, 4)
    allocation["fc1"] = Choice(0.5, 3)
    rng = np.random.default_rng(0)
    units = {n: rng.random(g.units) for n, g in geometry.items()}
    weights = {n: {"kernel": rng.random(np.shape(params[n]["kernel"]))} for n in geometry}
    unit_masks, weight_masks = joint.choice_masks(specs, geometry, allocation, units, weights)
    bits = {n: c.bits for n, c in allocation.items()}
    size = joint.size_bits(specs, params, bits, unit_masks, weight_masks)

    conv1 = 3 * 3 * 1 * 4 * 8 + 4 * 32 + 4 * 3 * 32
    conv2 = 3 * 3 * 4 * 2 * 4 + 2 * 32 + 2 * 3 * 32
    conv3 = 3 * 3 * 2 * 8 * 8 + 8 * 32 + 8 * 3 * 32  # reads the 2 channels conv2 keeps
    conv4 = 3 * 3 * 8 * 8 * 8 + 8 * 32 + 8 * 3 * 32
    fc1 = (32 * 16 // 2) * 3 + 32 * 16 + 16 * 32 + 16 * 32  # values, presence bits, scales, bias
    fc2 = 16 * 10 * 8 + 10 * 32 + 10 * 32
    assert size["total"] == conv1 + conv2 + conv3 + conv4 + fc1 + fc2
    assert size["index"] == 32 * 16
    # The solver's bound counts conv3 at its full fan-in: the 2 removed input channels' weights.
    bound = joint.fixed_bits(specs, params) + joint.allocation_cost_bits(
        joint.cost_table(geometry, (0.0, 0.5), (3, 4, 8)), allocation
    )
    assert bound == size["total"] + 3 * 3 * 2 * 8 * 8
    # Unpruned, the accounting is the quantization experiment's model size.
    whole = joint.size_bits(specs, params, bits)
    assert whole["total"] == 8 * model_size_bytes(params, bits)["total"]


def constructed_layers():
    """A conv layer (filters pruned) and a dense layer (weights pruned, scores |w|: a column's
    largest weight goes last, so no kept weight's scale shrinks) with random kernels."""
    rng = np.random.default_rng(3)
    conv = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    dense = rng.normal(size=(24, 5)).astype(np.float32)
    params = {"conv": {"kernel": conv}, "dense": {"kernel": dense}}
    geometry = {
        "conv": LayerGeometry("conv", "conv", "unit", 6, conv.size, 0),
        "dense": LayerGeometry("dense", "dense", "weight", 5, dense.size, 0),
    }
    weight_scores = {
        "conv": {"kernel": np.abs(conv) * rng.uniform(0.5, 2.0, size=conv.shape)},
        "dense": {"kernel": np.abs(dense)},
    }
    return params, geometry, weight_scores


LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)
WIDTHS = (2, 3, 4, 5, 6, 7, 8)


def assert_monotone(table):
    """Zero whole at 8 bits, non-increasing in bits, non-decreasing in the level (up to float32
    rounding: a weight that rounds to 0 adds to R exactly what it takes from Q)."""
    for row in table.values():
        assert row[Choice(0.0, 8)] == 0.0
        tolerance = 1e-6 * max(abs(v) for v in row.values())
        for level in LEVELS:
            along_bits = [row[Choice(level, b)] for b in WIDTHS]
            assert all(a >= b - tolerance for a, b in itertools.pairwise(along_bits))
            assert along_bits[0] > along_bits[-1]
        for bits in WIDTHS:
            along_levels = [row[Choice(p, bits)] for p in LEVELS]
            assert all(a <= b + tolerance for a, b in itertools.pairwise(along_levels))
            assert along_levels[-1] > along_levels[0]


def test_deeplift_damage_is_zero_whole_at_8_bits_and_monotone():
    params, geometry, weight_scores = constructed_layers()
    table = joint_damage.deeplift_damage(params, geometry, weight_scores, LEVELS, WIDTHS)
    assert_monotone(table)


def test_hessian_damage_is_zero_whole_at_8_bits_and_monotone():
    params, geometry, _ = constructed_layers()
    table = joint_damage.hessian_damage(params, geometry, {"conv": 3.0, "dense": 0.5}, LEVELS)
    assert_monotone(table)


def test_damage_is_removed_mass_plus_quantization_of_what_the_masks_keep():
    """Through ``choice_masks`` (xaijax.pruning's masks), independently of the tables' code."""
    model, variables = tiny_model()
    specs, params = model.layer_specs(), variables["params"]
    geometry = joint.layer_geometry(specs, params)
    rng = np.random.default_rng(1)
    weights = {n: {"kernel": rng.random(np.shape(params[n]["kernel"]))} for n in geometry}
    units = {n: w["kernel"].reshape(-1, geometry[n].units).sum(0) for n, w in weights.items()}
    levels, widths = (0.0, 0.5), (3, 8)
    deeplift = joint_damage.deeplift_damage(params, geometry, weights, levels, widths)
    traces = {n: float(i + 1) for i, n in enumerate(geometry)}
    hessian = joint_damage.hessian_damage(params, geometry, traces, levels, widths)
    h_units, h_weights = joint_damage.hessian_scores(params, geometry, traces)
    for level, bits in itertools.product(levels, widths):
        allocation = {n: Choice(level if g.granularity else 0.0, bits) for n, g in geometry.items()}
        for table, (u, w) in ((deeplift, (units, weights)), (hessian, (h_units, h_weights))):
            unit_masks, weight_masks = joint.choice_masks(specs, geometry, allocation, u, w)
            for name, g in geometry.items():
                if g.granularity == "unit":
                    keep = np.ones(g.units, bool) if unit_masks is None else unit_masks[name]
                    removed = float(np.sum(u[name][~keep]))
                    kernel = np.where(keep, params[name]["kernel"], 0.0)
                    assert int(np.sum(~keep)) == joint.removed_count(g, level)
                else:
                    keep = np.ones(np.shape(params[name]["kernel"]), bool)
                    if g.granularity == "weight" and weight_masks is not None:
                        keep = weight_masks[name]["kernel"]
                    removed = float(np.sum(w[name]["kernel"][~keep]))
                    kernel = np.where(keep, params[name]["kernel"], 0.0)
                masked = {name: {"kernel": kernel}}
                if table is deeplift:
                    quant = deeplift_sensitivity(masked, {name: weights[name]}, (bits,))
                    whole = deeplift_sensitivity(params, {name: weights[name]}, (8,))
                    expected = removed + quant[name][bits] - whole[name][8]
                else:
                    quant = hessian_sensitivity(masked, {name: traces[name]}, (bits,))
                    whole = hessian_sensitivity(params, {name: traces[name]}, (8,))
                    expected = removed + 0.5 * (quant[name][bits] - whole[name][8])
                got = table[name][allocation[name]]
                assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


def smoke_config():
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("smoke", repo / "configs" / "digits_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    config = smoke.get_config()
    config.model.widths = TINY_WIDTHS
    return config


def test_joint_stage_end_to_end_on_digits(tmp_path):
    from xaijax.experiments import STAGES
    from xaijax.experiments import joint as experiment

    assert STAGES["joint"] is experiment.STAGE
    config = smoke_config()
    model, variables = tiny_model()
    config.joint = ml_collections.ConfigDict(
        {
            "strategies": ("joint_deeplift", "uniform"),
            "budgets": (0.12,),
            "levels": (0.0, 0.5),
            "bit_choices": (2, 4, 8),
            "finetune_epochs": 1,
            "importance": {"num_examples": 64, "batch_size": 64},
        }
    )
    results = experiment.run(config, tmp_path / "run", model=model, variables=variables)
    budget = 0.12 * joint.float_model_bytes(variables["params"])
    assert [r["strategy"] for r in results["runs"]] == ["joint_deeplift", "uniform"]
    specs = model.layer_specs()
    for run in results["runs"]:
        assert run["bytes"] <= min(run["bytes_bound"], budget) and budget == run["budget_bytes"]
        fixed = joint.fixed_bits(specs, variables["params"])
        assert run["capacity_bytes"] >= joint.capacity_bits(budget, fixed) / 8
        assert run["max_abs_masked_after"] == 0.0
        assert 0 <= run["accuracy_before"] <= 1 and 0 <= run["accuracy_after"] <= 1
        assert set(run["allocation"]) == {s.name for s in specs}
    deeplift = results["runs"][0]
    assert deeplift["predicted_damage"] is not None and any(
        c["level"] > 0 for c in deeplift["allocation"].values()
    )
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["runs"][0]["bytes"] == deeplift["bytes"]
    for phase in ("before", "after"):
        assert (tmp_path / "run" / f"accuracy_vs_bytes_{phase}.png").stat().st_size > 0
    assert (tmp_path / "run" / "allocations" / deeplift["key"] / "result.json").exists()


def test_stage_scores_are_kept_and_read_back_bit_for_bit(tmp_path, monkeypatch):
    """``qat.scores`` (both QAT stages' DeepLIFT scores and Hessian traces) computes once per set
    of inputs: a rerun reads the same bits back; other inputs recompute."""
    from xaijax import data
    from xaijax.experiments import qat
    from xaijax.experiments import quantize as quantize_experiment

    config = smoke_config()
    model, variables = tiny_model()
    q = quantize_experiment.defaults()
    q.importance.num_examples, q.hessian_examples, q.hessian_samples = 32, 32, 2
    train = data.load_dataset("digits", "train")
    names = [spec.name for spec in model.layer_specs()]
    directory = tmp_path / "scores"
    first = qat.scores(config, q, model, variables, train, names, directory)
    assert set(first) == {"deeplift", "traces", "seconds"} and set(first["traces"]) == set(names)

    calls = []

    def counted(what, value):
        return lambda *args, **kwargs: calls.append(what) or value

    monkeypatch.setattr(qat, "deeplift_scores", counted("deeplift", first["deeplift"]))
    monkeypatch.setattr(qat, "hessian_traces", counted("hessian", first["traces"]))
    again = qat.scores(config, q, model, variables, train, names, directory)
    assert calls == []
    assert again["traces"] == first["traces"] and again["seconds"] == first["seconds"]
    assert jax.tree.structure(again["deeplift"]) == jax.tree.structure(first["deeplift"])
    for kept, computed in zip(
        jax.tree.leaves(again["deeplift"]), jax.tree.leaves(first["deeplift"]), strict=True
    ):
        assert kept.dtype == computed.dtype and np.array_equal(kept, computed)

    q.seed = 1  # other probes and references: recomputed.
    qat.scores(config, q, model, variables, train, names, directory)
    assert calls == ["deeplift", "hessian"]
    traces_only = qat.scores(config, q, model, variables, train, names, directory, deeplift=False)
    assert calls == ["deeplift", "hessian", "hessian"] and "deeplift" not in traces_only


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("budgets", (1.5,)),
        ("levels", (0.5, 0.9)),
        ("strategies", ("joint_magic",)),
        ("bit_choices", (9,)),
        ("finetune_epochs", -1),
    ],
)
def test_a_bad_config_raises_naming_the_field(tmp_path, field, value):
    from xaijax.experiments import joint as experiment

    config = smoke_config()
    config.joint = ml_collections.ConfigDict({field: value})
    with pytest.raises(ValueError, match=rf"config\.joint\.{field}"):
        experiment.run(config, tmp_path / "bad", variables={"params": {}})
    assert not (tmp_path / "bad").exists()


def test_masks_zero_what_the_allocation_prunes():
    """The stage's masked variables: pruned filters' kernels, biases and BatchNorm are zero."""
    model, variables = tiny_model()
    specs, params = model.layer_specs(), variables["params"]
    geometry = joint.layer_geometry(specs, params)
    allocation = {n: Choice(0.5 if g.granularity else 0.0, 4) for n, g in geometry.items()}
    rng = np.random.default_rng(2)
    units = {n: rng.random(g.units) for n, g in geometry.items()}
    weights = {n: {"kernel": rng.random(np.shape(params[n]["kernel"]))} for n in geometry}
    unit_masks, weight_masks = joint.choice_masks(specs, geometry, allocation, units, weights)
    masked = pruning.mask_variables(specs, variables, unit_masks, weight_masks=weight_masks)
    for name, g in geometry.items():
        kernel = np.asarray(masked["params"][name]["kernel"])
        if g.granularity == "unit":
            assert np.all(kernel[..., ~unit_masks[name]] == 0)
            assert np.all(
                np.asarray(masked["params"][f"{name}_bn"]["scale"])[~unit_masks[name]] == 0
            )
        elif g.granularity == "weight":
            removed = joint.removed_count(g, 0.5)
            assert np.sum(~weight_masks[name]["kernel"]) == removed == g.weights // 2
