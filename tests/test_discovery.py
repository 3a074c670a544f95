"""Layer discovery by tracing (``xaijax.models.discovery``) and models named by import path.

Shapes only: every model is traced (``jax.eval_shape`` / ``jax.make_jaxpr``), nothing compiled.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest
import user_models

from xaijax import models
from xaijax.models import DiscoveryError, LayerSpec, discover_layer_specs, layer_specs_of

GRAY = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
COLOR = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
SMALL = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
ZOO_INPUTS = {
    "lenet5": GRAY,
    "vgg_small": GRAY,
    "vgg16": COLOR,
    "resnet20": COLOR,
    "resnet56": COLOR,
}


def spec(name, kind, bn=None, consumers=(), tied=None, classifier=False, slices=()) -> LayerSpec:
    return LayerSpec(name, kind, bn, tuple(consumers), tied, classifier, tuple(slices))


def with_group_labels_of_first_member(specs: tuple[LayerSpec, ...]) -> tuple[LayerSpec, ...]:
    """``specs`` with each tied group named after its first member in forward order. A group's
    label is free text ("stage2" in the zoo's ResNet) that no trace can recover; discovery names
    a group after its first layer, so this relabelling compares the groups themselves."""
    first: dict[str, str] = {}
    for s in specs:
        if s.tied_group is not None:
            first.setdefault(s.tied_group, s.name)
    return tuple(s._replace(tied_group=first.get(s.tied_group)) for s in specs)


@pytest.mark.parametrize("name", sorted(ZOO_INPUTS))
def test_discovery_equals_the_zoo_hand_written_specs(name):
    model = models.get_model(name)
    hand_written = model.layer_specs()
    discovered = discover_layer_specs(model, ZOO_INPUTS[name], train=False)
    assert discovered == with_group_labels_of_first_member(hand_written)
    if not any(s.tied_group for s in hand_written):
        assert discovered == hand_written  # Without residual groups: identical, labels included.


def test_discovery_in_train_mode_matches_eval_mode():
    model = models.get_model("resnet20")
    assert discover_layer_specs(model, COLOR, train=True) == discover_layer_specs(
        model, COLOR, train=False
    )


@pytest.mark.parametrize("train", [False, True])
def test_small_resnet(train):
    # The stem Conv_0 (BatchNorm_0) feeds block 0 whose identity shortcut adds the stem's
    # channels to block 0's Conv_1: the two are tied (group named after its first layer,
    # Conv_0). The tied channels are read by block 0's Conv_0 (from the stem) and by block 1's
    # Conv_0 and projection Conv_2 (from relu(x + y)): every member of a group lists the readers
    # of the whole group, as the zoo's ResNet does. Block 1 projects to 16 channels: its Conv_2
    # (projection) and Conv_1 are tied and read only by the Dense head after the global mean.
    # Forward order is by depth: block 1's Conv_2 reads the block input (depth 4, like Conv_0)
    # while its Conv_1 reads Conv_0's output (depth 5), so Conv_2 comes before Conv_1 although
    # it is called after it (the zoo's ResNet lists its shortcut before conv2 the same way).
    b0, b1 = "ResidualBlock_0/", "ResidualBlock_1/"
    stream0 = (f"{b0}Conv_0", f"{b1}Conv_0", f"{b1}Conv_2")
    expected = (
        spec("Conv_0", "conv", "BatchNorm_0", stream0, "Conv_0"),
        spec(f"{b0}Conv_0", "conv", f"{b0}BatchNorm_0", [f"{b0}Conv_1"]),
        spec(f"{b0}Conv_1", "conv", f"{b0}BatchNorm_1", stream0, "Conv_0"),
        spec(f"{b1}Conv_0", "conv", f"{b1}BatchNorm_0", [f"{b1}Conv_1"]),
        spec(f"{b1}Conv_2", "conv", f"{b1}BatchNorm_2", ["Dense_0"], f"{b1}Conv_2"),
        spec(f"{b1}Conv_1", "conv", f"{b1}BatchNorm_1", ["Dense_0"], f"{b1}Conv_2"),
        spec("Dense_0", "dense", classifier=True),
    )
    assert discover_layer_specs(user_models.SmallResNet(), SMALL, train=train) == expected


def test_branchy_cnn_with_avg_pool_and_concatenation():
    # The stem is read by both branches (branch_b through an average pool); the concatenation
    # puts both branches' channels into mix's input, so each branch has mix as its consumer;
    # mix's channels reach hidden through an average pool and a flatten; head makes the logits.
    # No BatchNorm, no addition: no ties. mix reads 6 + 4 = 10 channels: branch_a's are its
    # channels 0-5, branch_b's 6-9 (consumer_slices: (start, total) per consumer).
    expected = (
        spec("stem", "conv", consumers=["branch_a", "branch_b"]),
        spec("branch_a", "conv", consumers=["mix"], slices=[(0, 10)]),
        spec("branch_b", "conv", consumers=["mix"], slices=[(6, 10)]),
        spec("mix", "conv", consumers=["hidden"]),
        spec("hidden", "dense", consumers=["head"]),
        spec("head", "dense", classifier=True),
    )
    assert discover_layer_specs(user_models.BranchyCNN(), SMALL) == expected


def test_sequential_model():
    # nn.Sequential names its modules layers_<index>: the convs are items 0 and 3, the
    # BatchNorm item 4 (right after conv 3), the Dense layers items 7 and 9 (after the flatten).
    expected = (
        spec("layers_0", "conv", consumers=["layers_3"]),
        spec("layers_3", "conv", "layers_4", ["layers_7"]),
        spec("layers_7", "dense", consumers=["layers_9"]),
        spec("layers_9", "dense", classifier=True),
    )
    assert discover_layer_specs(user_models.sequential_cnn(), SMALL) == expected


class RoundTrip(nn.Module):
    """Layouts that move the channels and bring them back, then ops after the logits."""

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(4, (3, 3), name="first")(x)
        y = jnp.transpose(y, (0, 3, 1, 2))  # NCHW ...
        y = jnp.transpose(y, (0, 2, 3, 1))  # ... and back.
        flat = y.reshape((y.shape[0], -1))
        y = flat.reshape(y.shape)  # Unflattened: channels on the last axis again.
        y = nn.Conv(6, (3, 3), name="second")(jnp.pad(nn.gelu(y), ((0, 0), (1, 1), (1, 1), (0, 0))))
        logits = nn.Dense(5, name="head")(jnp.max(y, axis=(1, 2)))
        return nn.log_softmax(logits)  # Reduces over the classes: free after the classifier.


def test_follows_moved_and_restored_channels_and_ops_after_the_logits():
    assert discover_layer_specs(RoundTrip(), SMALL) == (
        spec("first", "conv", consumers=["second"]),
        spec("second", "conv", consumers=["head"]),
        spec("head", "dense", classifier=True),
    )


class GatedCNN(nn.Module):
    """Squeeze-and-excitation gating, dropout and a rematerialized block."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.remat(nn.Conv)(8, (3, 3), name="features")(x)
        gate = nn.relu(nn.Dense(4, name="squeeze")(x.mean(axis=(1, 2))))
        gate = nn.sigmoid(nn.Dense(8, name="excite")(gate))
        x = x * gate[:, None, None, :]
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10, name="head")(x.reshape((x.shape[0], -1)))


@pytest.mark.parametrize("train", [False, True])
def test_gating_ties_the_gate_to_the_gated_channels(train):
    # x * gate multiplies channel c of features by unit c of excite: one channel, so the two
    # are tied; their group's channels are read by squeeze (through the spatial mean) and by
    # head (through dropout and the flatten). Dropout's random mask carries no layer channels.
    assert discover_layer_specs(GatedCNN(), SMALL, train=train) == (
        spec("features", "conv", consumers=["squeeze", "head"], tied="features"),
        spec("squeeze", "dense", consumers=["excite"]),
        spec("excite", "dense", consumers=["squeeze", "head"], tied="features"),
        spec("head", "dense", classifier=True),
    )


class ChannelSlice(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (3, 3), name="conv")(x)[..., :4]
        return nn.Dense(10, name="head")(y.reshape((y.shape[0], -1)))


class TorchStyleFlatten(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = jnp.transpose(nn.Conv(8, (3, 3), name="conv")(x), (0, 3, 1, 2))
        return nn.Dense(10, name="head")(y.reshape((y.shape[0], -1)))


class ManualChannelNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (3, 3), name="conv")(x)
        y = y - y.mean(axis=-1, keepdims=True)
        return nn.Dense(10, name="head")(y.mean(axis=(1, 2)))


class Matmul(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (3, 3), name="conv")(x).mean(axis=(1, 2))
        mixing = self.param("mixing", nn.initializers.lecun_normal(), (8, 8))
        return nn.Dense(10, name="head")(y @ mixing)


class Depthwise(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (3, 3), name="conv")(x)
        y = nn.Conv(8, (3, 3), feature_group_count=8, name="depthwise")(y)
        return nn.Dense(10, name="head")(y.mean(axis=(1, 2)))


class NormOfSum(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.Conv(8, (3, 3), name="a")(x)
        y = nn.BatchNorm(use_running_average=True, name="bn")(a + nn.Conv(8, (3, 3), name="b")(a))
        return nn.Dense(10, name="head")(y.mean(axis=(1, 2)))


class SharedLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(3, (3, 3), name="conv")
        return nn.Dense(10, name="head")(conv(conv(x)).mean(axis=(1, 2)))


class ConcatTwice(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(4, (3, 3), name="conv")(x)
        y = nn.Conv(8, (3, 3), name="mix")(jnp.concatenate([y, y], axis=-1))
        return nn.Dense(10, name="head")(y.mean(axis=(1, 2)))


class TwoHeads(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (3, 3), name="conv")(x).mean(axis=(1, 2))
        return nn.Dense(10, name="head_a")(y) + nn.Dense(10, name="head_b")(y)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (ChannelSlice(), ("'conv'", "'slice'", "'head'")),
        (TorchStyleFlatten(), ("'conv'", "'reshape'", "'head'")),
        (ManualChannelNorm(), ("'conv'", "'reduce_sum'", "channel axis")),
        (Matmul(), ("'conv'", "'dot_general'", "'head'")),
        (Depthwise(), ("'depthwise'", "feature_group_count=8")),
        (NormOfSum(), ("'bn'", "'a'", "'b'")),
        (SharedLayer(), ("'conv'", "more than once")),
        (ConcatTwice(), ("'mix'", "'conv'", "2 times")),
        (TwoHeads(), ("'head_a'", "'head_b'", "output")),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_unsupported_structure_names_the_layer_and_the_op(model, words):
    with pytest.raises(DiscoveryError) as info:
        discover_layer_specs(model, SMALL)
    for word in words:
        assert word in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"a flax\.linen Module"):
        discover_layer_specs(lambda x: x, SMALL)
    with pytest.raises(ValueError, match="example_input"):
        discover_layer_specs(user_models.BranchyCNN(), [[1.0]])
    with pytest.raises(ValueError, match="rngs"):
        discover_layer_specs(user_models.BranchyCNN(), SMALL, rngs={})


def test_hand_written_specs_override_discovery():
    zoo = models.get_model("resnet20")
    assert layer_specs_of(zoo, COLOR, train=False) == zoo.layer_specs()  # Labels "stage<s>".
    user = user_models.BranchyCNN()
    assert layer_specs_of(user, SMALL) == discover_layer_specs(user, SMALL)


def test_get_model_by_import_path():
    model = models.get_model("user_models:SmallResNet", num_classes=7)
    assert isinstance(model, user_models.SmallResNet) and model.num_classes == 7
    built = models.get_model("user_models:sequential_cnn", num_classes=3)
    logits = jax.eval_shape(lambda x: built.init_with_output(jax.random.key(0), x)[0], SMALL)
    assert logits.shape == (2, 3)
    assert models.resolve_model("user_models:BranchyCNN") is user_models.BranchyCNN
    assert models.resolve_model("lenet5") is models.MODELS["lenet5"]


def test_model_from_config_builds_a_model_named_by_import_path():
    from xaijax.training import model_from_config

    config = ml_collections.ConfigDict(
        {"model": {"name": "user_models:BranchyCNN", "num_classes": 4, "widths": None}}
    )
    model = model_from_config(config)
    assert isinstance(model, user_models.BranchyCNN) and model.num_classes == 4


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet21", "import path"),
        ("user_models:NoSuchNet", "has no attribute 'NoSuchNet'"),
        ("no_such_package.models:Net", "cannot import 'no_such_package.models'"),
        ("user_models:", "must be 'package.module:ClassName'"),
        ("user_models:jnp", "not a model class"),
        ("user_models:ResidualBlock", "missing a required argument: 'features'"),
        ("builtins:dict", "built a dict, not a flax.linen Module"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.get_model(name)


def test_user_model_without_widths_cannot_be_built_narrower():
    with pytest.raises(ValueError, match="no 'widths' parameter"):
        models.get_model("user_models:SmallResNet", widths={"Conv_0": 4})
