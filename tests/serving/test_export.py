"""lade_tf.export: the serving SavedModel against NumPy references of DESIGN sections 1, 6 and 7."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lade_tf.export import SIGNATURE_NAMES, export_serving_model, read_serving_metadata
from lade_tf.label_shift import DEFAULT_PRIOR_STRENGTH, EM_MAX_ITERATIONS, EM_TOLERANCE
from lade_tf.prior_estimation import TargetPriorEstimator
from tests.serving.serving_support import CLASS_NAMES, REPO_ROOT, run_signature


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def raw_logits(model, images):
    return np.asarray(model(images, training=False), np.float64)


def reference_adjusted(raw, counts, train_loss, prior, tau=1.0):
    """Independent inference rule (p_t normalised): a model trained with CE(f + k log p_s) has
    f = log p_s(y|x) - k log p_s + const, so log p_t(y|x) = f - (1 - k) log p_s + log p_t + const,
    with k = 0 (CE), 1 (LADE, Balanced Softmax) or tau (logit-adjusted)."""
    source = np.asarray(counts, np.float64) / np.sum(counts)
    prior = np.asarray(prior, np.float64)
    prior = prior / prior.sum(axis=-1, keepdims=True)
    k = {"ce": 0.0, "lade": 1.0, "balanced_softmax": 1.0, "logit_adjusted": tau}[train_loss]
    with np.errstate(divide="ignore"):
        return raw - (1.0 - k) * np.log(source) + np.log(prior)


def check_against_reference(outputs, reference):
    """Outputs of a prediction signature equal the reference adjusted logits (-inf = prior 0)."""
    finite = np.isfinite(reference)
    np.testing.assert_allclose(outputs["logits"][finite], reference[finite], rtol=1e-5, atol=1e-4)
    assert np.all(outputs["logits"][~finite] <= -1e8)
    np.testing.assert_allclose(
        outputs["probabilities"], softmax(np.where(finite, reference, -1e9)), atol=1e-6
    )
    assert np.all(outputs["probabilities"][~finite] == 0.0)
    np.testing.assert_array_equal(outputs["class_ids"], reference.argmax(axis=1))


def test_signatures_have_the_contract_inputs_and_outputs(saved_model):
    signatures = saved_model.signatures
    assert set(signatures) == set(SIGNATURE_NAMES)
    specs = {name: fn.structured_input_signature[1] for name, fn in signatures.items()}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in specs["serving_default"].items()} == {
        "images": (tf.float32, [None, 8, 8, 1]),
        "target_prior": (tf.float32, [None, 10]),
    }
    assert set(specs["predict_uniform"]) == {"images"}
    assert specs["predict_encoded"]["image_bytes"].dtype == tf.string
    assert set(specs["estimate_prior"]) == {"images"}
    for name in ("serving_default", "predict_uniform", "predict_encoded"):
        outputs = signatures[name].structured_outputs
        assert {k: v.dtype for k, v in outputs.items()} == {
            "probabilities": tf.float32,
            "logits": tf.float32,
            "class_ids": tf.int64,
            "posteriors": tf.float32,
        }


def test_posteriors_are_what_a_tracker_needs_whatever_prior_was_sent(
    saved_model, trained_model, digits_split
):
    """Uncalibrated CE export: the posteriors for the training prior are softmax(f); every
    prediction signature returns them unchanged by the target prior."""
    images = digits_split["test_x"][:24]
    logits = raw_logits(trained_model, images)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    priors = np.random.default_rng(3).dirichlet(np.ones(10), size=len(images)).astype(np.float32)
    for name, inputs in (
        ("serving_default", dict(images=images, target_prior=priors)),
        ("predict_uniform", dict(images=images)),
        ("estimate_prior", dict(images=images)),
    ):
        served = run_signature(saved_model, name, **inputs)["posteriors"]
        np.testing.assert_allclose(served, expected, atol=1e-5, err_msg=name)


def test_serving_default_is_pc_softmax(saved_model, trained_model, digits_split):
    images = digits_split["test_x"][:40]
    rng = np.random.default_rng(1)
    priors = rng.dirichlet(np.ones(10), size=len(images)).astype(np.float32)
    priors[::4, 3] = 0.0  # zero entries: probability exactly 0
    priors[1] *= 7.0  # unnormalised rows are normalised
    outputs = run_signature(saved_model, "serving_default", images=images, target_prior=priors)
    reference = reference_adjusted(
        raw_logits(trained_model, images), digits_split["counts"], "ce", priors
    )
    check_against_reference(outputs, reference)


def test_lade_trained_model_uses_f_plus_log_prior(tmp_path, trained_model, digits_split):
    path = export_serving_model(
        trained_model,
        tmp_path / "1",
        class_counts=digits_split["counts"],
        train_loss="lade",
        alpha=0.1,
    )
    loaded = tf.saved_model.load(path)
    images = digits_split["test_x"][:16]
    prior = np.tile(np.linspace(1.0, 3.0, 10, dtype=np.float32), (16, 1))
    outputs = run_signature(loaded, "serving_default", images=images, target_prior=prior)
    reference = reference_adjusted(
        raw_logits(trained_model, images), digits_split["counts"], "lade", prior
    )
    check_against_reference(outputs, reference)
    assert read_serving_metadata(path)["alpha"] == 0.1


def test_predict_uniform_equals_a_uniform_target_prior(saved_model, digits_split):
    images = digits_split["test_x"][:20]
    uniform = np.full((20, 10), 0.1, np.float32)
    expected = run_signature(saved_model, "serving_default", images=images, target_prior=uniform)
    outputs = run_signature(saved_model, "predict_uniform", images=images)
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-6, atol=1e-6)


def encode(image: np.ndarray, fmt: str, mode: str = "L", scale: int = 1) -> bytes:
    picture = Image.fromarray(image[..., 0].astype(np.uint8), mode="L").convert(mode)
    if scale != 1:
        picture = picture.resize((8 * scale, 8 * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def test_predict_encoded_decodes_to_the_model_input(saved_model, digits_split):
    images = digits_split["test_x"][:20]
    prior = np.tile(np.asarray(digits_split["counts"], np.float32)[::-1], (20, 1))
    expected = run_signature(saved_model, "serving_default", images=images, target_prior=prior)
    png = np.array([encode(image, "PNG") for image in images], dtype=object)
    outputs = run_signature(saved_model, "predict_encoded", image_bytes=png, target_prior=prior)
    for name in expected:  # lossless, same size: bit-exact
        np.testing.assert_array_equal(outputs[name], expected[name])
    # RGB JPEGs at twice the size are converted to one channel and resized to 8x8.
    jpeg = np.array([encode(image, "JPEG", "RGB", scale=2) for image in images], dtype=object)
    outputs = run_signature(saved_model, "predict_encoded", image_bytes=jpeg, target_prior=prior)
    assert outputs["probabilities"].shape == (20, 10)
    assert np.mean(outputs["class_ids"] == expected["class_ids"]) >= 0.8


def numpy_map_em(posterior, reference, centre, strength):
    """Saerens et al. (2002) EM with a Dirichlet(1 + strength * centre) prior on p_t, written
    independently of lade_tf: M-step pi = (sum_i q_i + strength * centre) / (N + strength)."""
    prior = reference.copy()
    for _ in range(EM_MAX_ITERATIONS):
        weighted = posterior * (prior / reference)
        updated = (
            (weighted / weighted.sum(axis=1, keepdims=True)).sum(axis=0) + strength * centre
        ) / (len(posterior) + strength)
        change = np.abs(updated - prior).max()
        prior = updated
        if change < EM_TOLERANCE:
            break
    return prior / prior.sum()


def test_estimate_prior_is_em_on_the_source_posterior(saved_model, trained_model, digits_split):
    """The default export: uncalibrated EM under the default Dirichlet prior centred on p_s."""
    labels = digits_split["test_y"]
    # A tail-heavy target sample: class c keeps 2 (c + 1) of its test images.
    keep = np.concatenate([np.flatnonzero(labels == c)[: 2 * (c + 1)] for c in range(10)])
    images = digits_split["test_x"][keep]
    counts = np.asarray(digits_split["counts"], np.float64)
    source = counts / counts.sum()
    expected = numpy_map_em(
        softmax(raw_logits(trained_model, images)), source, source, DEFAULT_PRIOR_STRENGTH
    )  # CE: p_s(y|x) = softmax(f)
    outputs = run_signature(saved_model, "estimate_prior", images=images)
    assert outputs["target_prior"].shape == (len(images), 10)
    np.testing.assert_allclose(
        outputs["target_prior"], np.tile(expected, (len(images), 1)), atol=1e-5
    )
    assert expected[5:].sum() > source[5:].sum()  # moved towards the tail-heavy truth
    reference = reference_adjusted(
        raw_logits(trained_model, images), counts, "ce", outputs["target_prior"][0]
    )
    check_against_reference(outputs, np.broadcast_to(reference, outputs["logits"].shape))
    # One image: about the source prior, not a one-hot collapse (L1 <= 2 / (1 + strength)).
    one = run_signature(saved_model, "estimate_prior", images=images[-1:])["target_prior"][0]
    assert np.abs(one - source).sum() <= 2 / (1 + DEFAULT_PRIOR_STRENGTH) + 1e-5
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one image"):
        run_signature(saved_model, "estimate_prior", images=images[:0])


def calibration_split(digits_split):
    """(val images, val labels, target images): 10 test images per class as the labelled split the
    calibration is fitted on, the other test images as the unlabeled target batch."""
    labels = digits_split["test_y"]
    val = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(10)])
    target = np.setdiff1d(np.arange(len(labels)), val)
    return digits_split["test_x"][val], labels[val], digits_split["test_x"][target]


@pytest.fixture(scope="module")
def calibrated_exports(tmp_path_factory, trained_model, digits_split):
    """The CE model exported as itself and as a tau = 2 logit-adjusted model (logits shifted by
    -2 log p_s: the same posteriors), each with a calibrated (Dirichlet) estimate_prior."""
    import keras

    counts = digits_split["counts"]
    val_images, val_labels, _ = calibration_split(digits_split)
    log_source = np.log(np.asarray(counts, np.float64) / np.sum(counts))
    inputs = keras.Input((8, 8, 1))
    shifted = keras.Model(inputs, trained_model(inputs) - np.float32(2.0 * log_source))
    root = tmp_path_factory.mktemp("calibrated")
    exports = {}
    for name, model, loss, tau in (
        ("ce", trained_model, "ce", 1.0),
        ("logit_adjusted", shifted, "logit_adjusted", 2.0),
    ):
        estimator = TargetPriorEstimator(counts, loss, tau=tau).fit(
            raw_logits(model, val_images), val_labels
        )
        path = export_serving_model(
            model,
            root / name,
            class_counts=counts,
            train_loss=loss,
            tau=tau,
            prior_estimator=estimator,
        )
        exports[name] = (model, estimator, tf.saved_model.load(path), path)
    return exports


@pytest.mark.parametrize("name", ["ce", "logit_adjusted"])
def test_calibrated_estimate_prior_graph_equals_numpy(calibrated_exports, digits_split, name):
    model, estimator, loaded, path = calibrated_exports[name]
    assert estimator.calibrator.method == "dirichlet"
    _, _, target = calibration_split(digits_split)
    rng = np.random.default_rng(3)
    for size in (1, 8, 64, len(target)):
        images = target[np.sort(rng.choice(len(target), size, replace=False))]
        served = run_signature(loaded, "estimate_prior", images=images)["target_prior"]
        expected = estimator.estimate(raw_logits(model, images))
        np.testing.assert_allclose(
            served, np.tile(expected, (size, 1)), atol=1e-5, err_msg=f"batch of {size}"
        )
    metadata = read_serving_metadata(path)
    assert metadata["prior_estimation"] == json.loads(json.dumps(estimator.to_config()))
    assert metadata["tau"] == (2.0 if name == "logit_adjusted" else None)


def test_calibrated_estimate_prior_against_an_independent_formula(calibrated_exports, digits_split):
    """Dirichlet-calibrated posteriors for the balanced val prior, z = f - log p_s + log p_u,
    softmax(W log_softmax(z) + b), then MAP-EM with p_u as the reference and p_s as the Dirichlet
    centre, written out here; the served posteriors are the calibrated ones."""
    model, estimator, loaded, _ = calibrated_exports["ce"]
    calibration = estimator.to_config()["calibration"]
    _, _, target = calibration_split(digits_split)
    counts = np.asarray(digits_split["counts"], np.float64)
    source, uniform = counts / counts.sum(), np.full(10, 0.1)
    z = raw_logits(model, target) - np.log(source) + np.log(uniform)
    log_probs = z - z.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    posteriors = softmax(log_probs @ np.asarray(calibration["matrix"]).T + calibration["bias"])
    expected = numpy_map_em(posteriors, uniform, source, DEFAULT_PRIOR_STRENGTH)
    served = run_signature(loaded, "estimate_prior", images=target)
    np.testing.assert_allclose(served["target_prior"][0], expected, atol=1e-5)
    np.testing.assert_allclose(served["posteriors"], posteriors, atol=1e-5)


def test_logit_adjusted_export_applies_tau(calibrated_exports, digits_split):
    model, _, loaded, _ = calibrated_exports["logit_adjusted"]
    images = digits_split["test_x"][:16]
    prior = np.tile(np.linspace(3.0, 1.0, 10, dtype=np.float32), (16, 1))
    outputs = run_signature(loaded, "serving_default", images=images, target_prior=prior)
    reference = reference_adjusted(
        raw_logits(model, images), digits_split["counts"], "logit_adjusted", prior, tau=2.0
    )
    check_against_reference(outputs, reference)
    # The same posteriors as the CE model it was made from, through PC Softmax.
    _, _, ce_loaded, _ = calibrated_exports["ce"]
    ce_outputs = run_signature(ce_loaded, "serving_default", images=images, target_prior=prior)
    np.testing.assert_allclose(outputs["probabilities"], ce_outputs["probabilities"], atol=1e-5)


@pytest.mark.parametrize(
    "case, message",
    [
        ("other_loss", r"prior_estimator is for .*'lade'"),
        ("unfitted", "is not fitted"),
        ("bbse", "expected 'em'"),
        ("tau_for_ce", "tau = 2.0 with train_loss = 'ce'"),
    ],
)
def test_export_rejects_a_mismatched_estimator(
    tmp_path, trained_model, digits_split, case, message
):
    counts = digits_split["counts"]
    arguments = {"class_counts": counts, "train_loss": "ce"}
    if case == "other_loss":
        arguments["prior_estimator"] = TargetPriorEstimator(counts, "lade", calibration="none")
    elif case == "unfitted":
        arguments["prior_estimator"] = TargetPriorEstimator(counts, "ce")
    elif case == "bbse":
        arguments["prior_estimator"] = TargetPriorEstimator(
            counts, "ce", method="bbse", calibration="none"
        )
    else:
        arguments["tau"] = 2.0
    with pytest.raises(ValueError, match=message):
        export_serving_model(trained_model, tmp_path / "1", **arguments)
    assert not (tmp_path / "1").exists()


def test_class_info_and_metadata_asset(saved_model, export_base, digits_split):
    counts = digits_split["counts"]
    outputs = run_signature(saved_model, "class_info", class_ids=np.array([0, 9, 4], np.int64))
    assert [name.decode() for name in outputs["class_names"]] == ["zero", "nine", "four"]
    np.testing.assert_array_equal(outputs["class_counts"], [counts[0], counts[9], counts[4]])
    source = np.asarray(counts) / np.sum(counts)
    np.testing.assert_allclose(outputs["source_prior"], source[[0, 9, 4]], rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="class_ids must be < 10"):
        run_signature(saved_model, "class_info", class_ids=np.array([10], np.int64))

    metadata = read_serving_metadata(export_base / "1")
    assert metadata["class_names"] == CLASS_NAMES
    assert metadata["class_counts"] == list(counts)
    np.testing.assert_allclose(metadata["source_prior"], source)
    assert metadata["train_loss"] == "ce" and metadata["alpha"] is None and metadata["tau"] is None
    estimation = metadata["prior_estimation"]
    assert estimation["calibration"] == {
        "method": "none",
        "temperature": 1.0,
        "bias": None,
        "matrix": None,
        "l2": None,
    }
    assert estimation["prior_strength"] == DEFAULT_PRIOR_STRENGTH
    assert (estimation["tolerance"], estimation["max_iterations"]) == (
        EM_TOLERANCE,
        EM_MAX_ITERATIONS,
    )
    assert metadata["input_shape"] == [8, 8, 1]
    assert metadata["signatures"]["serving_default"]["inputs"] == ["images", "target_prior"]
    assert metadata["dataset"].startswith("sklearn digits")


@pytest.mark.parametrize(
    "prior, message",
    [
        ([-0.1] + [0.1] * 9, "negative"),
        ([float("nan")] + [0.1] * 9, "NaN or infinite"),
        ([0.0] * 10, "sums to 0"),
    ],
)
def test_invalid_prior_fails_in_graph(saved_model, digits_split, prior, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        run_signature(
            saved_model,
            "serving_default",
            images=digits_split["test_x"][:2],
            target_prior=np.tile(np.asarray(prior, np.float32), (2, 1)),
        )


def test_export_is_atomic_and_refuses_a_non_empty_directory(tmp_path, trained_model, digits_split):
    counts = digits_split["counts"]
    base = tmp_path / "base"
    (base / "2").mkdir(parents=True)  # an empty target directory is fine
    export_serving_model(trained_model, base / "2", class_counts=counts, train_loss="ce")
    assert sorted(os.listdir(base)) == ["2"]  # no staging directory left behind
    with pytest.raises(ValueError, match="not empty"):
        export_serving_model(trained_model, base / "2", class_counts=counts, train_loss="ce")
    with pytest.raises(ValueError, match="reserved"):
        export_serving_model(
            trained_model,
            base / "3",
            class_counts=counts,
            train_loss="ce",
            metadata={"class_names": []},
        )
    assert sorted(os.listdir(base)) == ["2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_names": ["a", "b"]}, "class_names has 2 entries"),
        ({"class_counts": [10] * 9}, r"expected \(batch, 9\)"),
        ({"class_counts": [10] * 9 + [0]}, r"class_counts\[9\]"),
        ({"train_loss": "focal"}, "train_loss"),
    ],
)
def test_export_rejects_bad_arguments(tmp_path, trained_model, digits_split, kwargs, message):
    arguments = {"class_counts": digits_split["counts"], "train_loss": "ce", **kwargs}
    with pytest.raises(ValueError, match=message):
        export_serving_model(trained_model, tmp_path / "1", **arguments)
    assert not (tmp_path / "1").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_saved_model_loads_without_this_package(export_base, digits_split):
    """Plain TensorFlow loads and runs it: no lade_tf import, no custom ops."""
    script = (
        "import sys, json, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(export_base / '1')!r})\n"
        "out = m.signatures['predict_uniform'](images=tf.zeros([2, 8, 8, 1]))\n"
        "print(json.dumps({'lade': [k for k in sys.modules if k.startswith('lade_tf')],"
        " 'shape': out['probabilities'].shape.as_list()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=380,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"lade": [], "shape": [2, 10]}


def test_trainer_fits_the_served_estimator_on_the_val_split(trained_model, digits_split):
    """pipeline.trainer.prior_estimator: BCTS on the val batches, uncalibrated without them or
    when the val split lacks a class (the fit cannot run)."""
    from pipeline.trainer import prior_estimator

    counts = digits_split["counts"]
    val_images, val_labels, _ = calibration_split(digits_split)
    batches = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(32)
    fitted = prior_estimator(trained_model, batches, counts, "ce", 1.0)
    expected = TargetPriorEstimator(counts, "ce").fit(
        raw_logits(trained_model, val_images), val_labels
    )
    assert fitted.calibrator.method == "dirichlet"
    # The trainer predicts in batches of 32, the reference in one batch: oneDNN's kernels differ
    # with the batch size in the last bits, and the BCTS fit carries that into its parameters,
    # hence tolerances well above float32 round-off.
    assert fitted.calibrator.temperature == pytest.approx(expected.calibrator.temperature, rel=1e-5)
    np.testing.assert_allclose(fitted.calibrator.bias, expected.calibrator.bias, atol=2e-5)
    assert prior_estimator(trained_model, None, counts, "ce", 1.0).calibrator.method == "none"
    partial = tf.data.Dataset.from_tensor_slices(
        (val_images[val_labels != 9], val_labels[val_labels != 9])
    ).batch(32)
    assert prior_estimator(trained_model, partial, counts, "ce", 1.0).calibrator.method == "none"


def test_class_info_gives_a_client_side_tracker_its_constants(calibrated_exports, digits_split):
    """The reference prior, the Dirichlet strength and the soft confusion matrix of the calibrated
    validation posteriors, A[i, j] = mean over the split of q(i) 1[y = j], computed here from the
    served posteriors of the validation images."""
    model, estimator, loaded, _ = calibrated_exports["ce"]
    val_images, val_labels, _ = calibration_split(digits_split)
    info = run_signature(loaded, "class_info", class_ids=np.arange(10, dtype=np.int64))
    np.testing.assert_allclose(info["reference_prior"], np.full(10, 0.1), atol=1e-7)
    np.testing.assert_allclose(info["prior_strength"], DEFAULT_PRIOR_STRENGTH)
    posteriors = run_signature(loaded, "predict_uniform", images=val_images)["posteriors"]
    expected = posteriors.T @ np.eye(10)[val_labels] / len(val_labels)
    np.testing.assert_allclose(info["reference_confusion"], expected, atol=1e-5)
    np.testing.assert_allclose(
        info["reference_confusion"], estimator.reference_confusion, atol=1e-6
    )
