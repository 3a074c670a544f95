"""Deployable artifacts: exported programs equal the in-memory models, the loader needs no model
code, corrupt or mismatched artifacts are refused by name, sizes are reported."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xaijax import artifact, models, pipeline, pruning, quantization, weight_sharing
from xaijax.artifact import loader

SHAPE = (28, 28, 1)
LOADER = Path(loader.__file__)
SHARED_BITS = {"conv1": 2, "conv2": 3, "fc1": 4, "fc2": 5, "fc3": 8}
INTEGER_BITS = {"conv1": 4, "conv2": 8, "fc1": 2, "fc2": 3, "fc3": 6}


@pytest.fixture(scope="module")
def lenet():
    """LeNet-5 with numpy-drawn weights (no compilation) and a few images."""
    model = models.get_model("lenet5")
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *SHAPE), jnp.float32))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if jax.tree_util.keystr(path[-1:]) == "['kernel']":
            return rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return 0.05 * rng.standard_normal(leaf.shape)

    variables = jax.tree_util.tree_map_with_path(draw, abstract)
    variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
    images = rng.uniform(0.0, 1.0, (7, *SHAPE)).astype(np.float32)
    return model, variables, images


@pytest.fixture(scope="module")
def shrunk(lenet):
    """LeNet-5 with some units of every hidden layer removed (physically narrower)."""
    model, variables, _ = lenet
    rng = np.random.default_rng(1)
    masks = {}
    for spec in model.layer_specs():
        width = variables["params"][spec.name]["kernel"].shape[-1]
        keep = np.ones(width, bool) if spec.is_classifier else rng.uniform(size=width) > 0.4
        keep[0] = True
        masks[spec.name] = keep
    narrow, narrow_variables = pruning.shrink(model, variables, masks)
    narrow_variables = jax.tree.map(np.asarray, narrow_variables)
    assert narrow_variables["params"]["fc1"]["kernel"].shape[1] < 120
    return narrow, narrow_variables


def in_memory(model, variables, images):
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, images))


def random_shared(params, seed: int = 2) -> weight_sharing.SharedWeights:
    """Codebooks and indices drawn at random, a third of each kernel MASKED (pruned)."""
    rng = np.random.default_rng(seed)
    shared = {}
    for name, bits in SHARED_BITS.items():
        shape = params[name]["kernel"].shape
        codebook = rng.normal(0.0, 0.1, 2**bits).astype(np.float32)
        indices = rng.integers(0, 2**bits, shape).astype(np.int32)
        indices[rng.uniform(size=shape) < 0.33] = weight_sharing.MASKED
        shared[name] = weight_sharing.SharedLayer(jnp.asarray(codebook), jnp.asarray(indices))
    return shared


@pytest.fixture(scope="module")
def written(lenet, shrunk, tmp_path_factory):
    """Three artifacts (float LeNet-5, shrunk + shared, shrunk + integer) and their references."""
    model, variables, images = lenet
    narrow, narrow_variables = shrunk
    root = tmp_path_factory.mktemp("artifacts")
    shared = random_shared(narrow_variables["params"])
    decoded = {"params": jax.jit(weight_sharing.decode)(narrow_variables["params"], shared)}
    exported = quantization.export_integer_model(narrow_variables, INTEGER_BITS, pack=True)
    cases = {
        "float": (model, variables, artifact.encode_float(variables), variables),
        "shared": (
            narrow,
            narrow_variables,
            artifact.encode_shared(narrow_variables, shared),
            decoded,
        ),
        "integer": (
            narrow,
            narrow_variables,
            artifact.encode_integer(exported),
            quantization.dequantize(exported),
        ),
    }
    out = {}
    for name, (net, _, encoded, reference) in cases.items():
        manifest = artifact.write(
            root / name,
            functools.partial(net.apply, train=False),
            encoded,
            input_shape=SHAPE,
            test=(images, np.arange(images.shape[0]) % 10),
        )
        out[name] = {
            "path": root / name,
            "manifest": manifest,
            "encoded": encoded,
            "model": net,
            "reference": reference,
            "logits": in_memory(net, reference, images),
        }
    out["shared"]["layers"] = shared
    out["integer"]["exported"] = exported
    return out


def assert_same_outputs(logits, expected):
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(expected, -1))


# Packing.


@pytest.mark.parametrize("bits", range(1, 9))
def test_unpacking_inside_jax_inverts_packing(bits):
    rng = np.random.default_rng(bits)
    for count in (0, 1, 7, 33):
        values = rng.integers(0, 2**bits, count)
        stream = artifact.pack_unsigned(values, bits)
        assert stream.dtype == np.uint8 and stream.shape == (-(-count * bits // 8),)
        unpacked = jax.jit(artifact.unpack_unsigned, static_argnums=(1, 2))(stream, bits, count)
        np.testing.assert_array_equal(np.asarray(unpacked), values)


@pytest.mark.parametrize("bits", quantization.SUPPORTED_BITS)
def test_packing_of_offset_integers_is_the_integer_exports_layout(bits):
    bound = 2 ** (bits - 1) - 1
    values = np.random.default_rng(bits).integers(-bound, bound + 1, 41)
    np.testing.assert_array_equal(
        artifact.pack_unsigned(values + bound, bits), quantization.pack_bits(values, bits)
    )


def test_packing_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match="outside"):
        artifact.pack_unsigned(np.array([0, 4]), 2)
    with pytest.raises(ValueError, match="outside"):
        artifact.pack_unsigned(np.array([-1]), 3)
    with pytest.raises(ValueError, match="bytes"):
        artifact.unpack_unsigned(np.zeros(2, np.uint8), 3, 9)


# Predictions.


def test_float_artifact_gives_the_in_memory_logits_at_any_batch_size(lenet, written):
    _, _, images = lenet
    entry = written["float"]
    loaded = artifact.load(entry["path"])
    assert_same_outputs(loaded.predict(images), entry["logits"])
    assert_same_outputs(loaded.predict(images[:1]), entry["logits"][:1])
    assert_same_outputs(loaded.predict(images, batch_size=3), entry["logits"])
    np.testing.assert_array_equal(loaded.classify(images), np.argmax(entry["logits"], -1))


@pytest.mark.parametrize("name", ["shared", "integer"])
def test_compressed_artifact_predicts_as_the_decoded_model(lenet, written, name):
    _, _, images = lenet
    entry = written[name]
    loaded = artifact.load(entry["path"])
    assert loaded.manifest["encoding"] == name
    assert_same_outputs(loaded.predict(images), entry["logits"])


def test_shared_decoding_in_the_program_is_weight_sharings_decode(written):
    entry = written["shared"]
    arrays = {k: jnp.asarray(v) for k, v in entry["encoded"].arrays.items()}
    decoded = jax.jit(entry["encoded"].decode)(arrays)
    kernels = weight_sharing.kernel_leaves(decoded["params"])
    for name, layer in entry["layers"].items():
        expected = np.where(
            np.asarray(layer.indices) == weight_sharing.MASKED,
            0.0,
            np.asarray(layer.codebook)[np.maximum(np.asarray(layer.indices), 0)],
        )
        np.testing.assert_array_equal(np.asarray(kernels[name]), expected)


def test_integer_artifact_predicts_as_the_fake_quantized_model(lenet, shrunk, written):
    _, _, images = lenet
    narrow, narrow_variables = shrunk
    fake = quantization.quantized_model(narrow, INTEGER_BITS)
    logits = np.asarray(jax.jit(fake.apply)(narrow_variables, images))
    predicted = artifact.load(written["integer"]["path"]).classify(images)
    np.testing.assert_array_equal(predicted, np.argmax(logits, -1))


def test_manifest_accuracy_is_the_artifacts_own(lenet, written):
    _, _, images = lenet
    labels = np.arange(images.shape[0]) % 10
    for entry in written.values():
        loaded = artifact.load(entry["path"])
        assert loaded.manifest["accuracy"] == loaded.accuracy(images, labels)
        assert loaded.manifest["accuracy_examples"] == images.shape[0]


def test_loader_runs_in_a_process_that_never_imports_the_model_code(lenet, written, tmp_path):
    _, _, images = lenet
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        import numpy as np

        spec = importlib.util.spec_from_file_location("artifact_loader", {str(LOADER)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = {{}}
        for name in ("float", "shared", "integer"):
            loaded = module.load({str(written["float"]["path"].parent)!r} + "/" + name)
            out[name] = loaded.predict(np.load({str(tmp_path / "images.npy")!r})).tolist()
        out["modules"] = sorted(
            m for m in sys.modules if m.split(".")[0] in ("xaijax", "flax", "optax", "aqt")
        )
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    for name in ("float", "shared", "integer"):
        assert_same_outputs(np.asarray(out[name], np.float32), written[name]["logits"])


def test_the_same_model_exports_to_the_same_bytes_from_anywhere(written, tmp_path):
    entry = written["integer"]
    apply = functools.partial(entry["model"].apply, train=False)

    def write(path):
        return artifact.write(path, apply, entry["encoded"], input_shape=SHAPE)

    write(tmp_path / "a")
    (lambda: write(tmp_path / "b"))()
    for name in ("program.jaxexport", "weights.npz"):
        expected = (entry["path"] / name).read_bytes()
        assert (
            (tmp_path / "a" / name).read_bytes() == expected == (tmp_path / "b" / name).read_bytes()
        )
    assert b"test_artifact.py" not in (tmp_path / "a" / "program.jaxexport").read_bytes()


# Sizes.


def test_sizes_are_reported_and_follow_the_compression(written):
    for entry in written.values():
        manifest, path = entry["manifest"], entry["path"]
        files = {
            name: (path / name).stat().st_size for name in ("weights.npz", "program.jaxexport")
        }
        assert manifest["size"]["weights_bytes"] == files["weights.npz"]
        assert manifest["size"]["program_bytes"] == files["program.jaxexport"]
        manifest_bytes = (path / "manifest.json").stat().st_size
        assert artifact.disk_bytes(path) == sum(files.values()) + manifest_bytes
        # The arrays hold the computed size, each packed stream rounded up to whole bytes.
        payload = sum(a.nbytes for a in entry["encoded"].arrays.values())
        streams = sum(a.dtype == np.uint8 for a in entry["encoded"].arrays.values())
        computed = manifest["size"]["computed_bytes"]
        assert computed <= payload < computed + streams + 1
        # The .npz adds, per array, a 128-byte .npy header and zip headers of 30 + 46 bytes
        # plus twice its file name, and 22 bytes at the end: nothing else.
        names = [f"{name}.npy" for name in entry["encoded"].arrays]
        framing = sum(128 + 76 + 2 * len(name) for name in names) + 22
        assert files["weights.npz"] == payload + framing
    float_bytes = written["float"]["manifest"]["size"]["weights_bytes"]
    for name in ("shared", "integer"):
        assert 4 * written[name]["manifest"]["size"]["weights_bytes"] < float_bytes


def test_computed_sizes_are_the_stages_formulas(shrunk, written):
    _, narrow_variables = shrunk
    params = narrow_variables["params"]
    n_float = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    shared_report = weight_sharing.size_report(params, written["shared"]["layers"])
    integer = quantization.model_size_bytes(params, INTEGER_BITS)["total"]
    float_variables = written["float"]["reference"]
    n_dense = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(float_variables))
    assert written["float"]["manifest"]["size"]["computed_bytes"] == 4 * n_dense
    assert written["shared"]["manifest"]["size"]["computed_bytes"] == shared_report.total_bits / 8
    assert written["integer"]["manifest"]["size"]["computed_bytes"] == integer
    assert integer < 4 * n_float


# Refusals.


@pytest.fixture
def copy_of(written, tmp_path):
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(written[name]["path"], target)
        return target

    return copy


def rewrite_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_flipped_byte_in_the_weights_is_a_checksum_error(copy_of):
    path = copy_of("integer")
    data = bytearray((path / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match="checksum mismatch for the weights"):
        artifact.load(path)


def test_a_truncated_program_is_refused(copy_of):
    path = copy_of("float")
    program = path / "program.jaxexport"
    program.write_bytes(program.read_bytes()[:-10])
    with pytest.raises(artifact.ArtifactError, match=r"program file .* bytes"):
        artifact.load(path)


def test_a_corrupt_or_foreign_manifest_is_refused(copy_of):
    path = copy_of("float")
    original = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(original[: len(original) // 2])
    with pytest.raises(artifact.ArtifactError, match="not valid JSON"):
        artifact.load(path)
    (path / "manifest.json").write_text(original)
    rewrite_manifest(path, lambda m: m.update(format_version=99))
    with pytest.raises(artifact.ArtifactError, match="format version 99"):
        artifact.load(path)
    (path / "manifest.json").write_text(original)
    rewrite_manifest(path, lambda m: m.pop("weights"))
    with pytest.raises(artifact.ArtifactError, match="'weights' missing"):
        artifact.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(artifact.ArtifactError, match=r"manifest\.json is missing"):
        artifact.load(path)


def test_a_manifest_that_misdescribes_the_weights_is_refused(copy_of):
    path = copy_of("shared")

    def widen(manifest):
        manifest["weights"]["shared/fc1/codebook"]["shape"] = [99]

    rewrite_manifest(path, widen)
    with pytest.raises(artifact.ArtifactError, match=r"'shared/fc1/codebook' is float32\[16\]"):
        artifact.load(path)


def test_a_program_of_another_model_is_a_mismatch(copy_of, written):
    path = copy_of("integer")
    shutil.copy(written["float"]["path"] / "program.jaxexport", path / "program.jaxexport")
    files = written["float"]["manifest"]["files"]["program"]
    rewrite_manifest(path, lambda m: m["files"].update(program=files))
    with pytest.raises(artifact.ArtifactError, match="program's arguments"):
        artifact.load(path)


def test_wrong_images_and_a_non_artifact_target_are_refused(written, tmp_path):
    loaded = artifact.load(written["float"]["path"])
    with pytest.raises(ValueError, match=r"images must have shape \[N, 28, 28, 1\]"):
        loaded.predict(np.zeros((2, 32, 32, 1), np.float32))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    encoded = written["float"]["encoded"]
    model = written["float"]["model"]
    with pytest.raises(artifact.ArtifactError, match="not an artifact"):
        artifact.write(
            tmp_path / "precious",
            functools.partial(model.apply, train=False),
            encoded,
            input_shape=SHAPE,
        )
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


# Which model a pipeline's artifact holds.


def pipeline_results():
    def run(strategy, budget, accuracy, total, allocation):
        return {
            "strategy": strategy,
            "budget": budget,
            "integer_accuracy": accuracy,
            "size": {"total": total},
            "allocation": allocation,
            "bits": {"fc": int(budget)},
        }

    return {
        "baseline": {"accuracy": 0.9},
        "prune": {"deeplift": {"accuracy": {"after_finetune": 0.85}}},
        "quantize": {
            "runs": [
                run("uniform", 4.0, 0.95, 100.0, "w4"),
                run("deeplift_rank", 4.0, 0.80, 90.0, "w3"),
                run("deeplift_sensitivity", 4.0, 0.84, 95.0, "w5"),
                run("deeplift_sensitivity", 6.0, 0.84, 80.0, "w6"),
            ]
        },
    }


def test_the_source_is_the_carried_criterions_most_accurate_then_smallest_allocation():
    results = pipeline_results()
    source = artifact.choose_source(results, "deeplift")
    assert (source["strategy"], source["allocation"], source["accuracy"]) == (
        "deeplift_sensitivity",
        "w6",
        0.84,
    )
    assert artifact.choose_source(results, "magnitude")["allocation"] == "w4"  # no such strategy
    picked = artifact.choose_source(results, "deeplift", strategy="deeplift_rank")
    assert picked["allocation"] == "w3"
    assert artifact.choose_source(results, "deeplift", budget=4)["allocation"] == "w5"
    with pytest.raises(ValueError, match="no quantize run of strategy 'hessian'"):
        artifact.choose_source(results, "deeplift", strategy="hessian")
    del results["quantize"]
    assert artifact.choose_source(results, "deeplift") == {
        "stage": "prune",
        "criterion": "deeplift",
        "accuracy": 0.85,
    }
    del results["prune"]
    assert artifact.choose_source(results, "deeplift")["stage"] == "baseline"


def test_the_pipeline_exports_by_default_and_checks_the_switch():
    assert pipeline.defaults().export_artifact is True
    section = ml_collections.ConfigDict({**pipeline.defaults().to_dict(), "export_artifact": 1})
    with pytest.raises(
        ValueError, match=r"config\.compress\.export_artifact must be True or False"
    ):
        pipeline.validate(section)
