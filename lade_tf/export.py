"""Export a trained logits model as a prior-aware serving SavedModel (docs/design.md section 6).

The SavedModel is standard: a `tf.Module` whose `tf.function`s become signatures, built only from
stock TensorFlow ops, so `tf.saved_model.load` and TF Serving load it without this package. Every
signature applies the one inference rule, `lade_tf.layers.PriorCorrection`, to the raw logits:

- `serving_default(images, target_prior)` -> `probabilities`, `logits` (adjusted), `class_ids`,
  and `posteriors`: the calibrated source posteriors for the estimator's reference prior, what a
  tracker of a drifting prior (`lade_tf.prior_tracking`) needs per image, whatever prior was sent
- `predict_uniform(images)`               -> the same with p_t uniform
- `predict_encoded(image_bytes, target_prior)` -> the same on PNG/JPEG/GIF/BMP bytes, decoded and
  resized to the model's input height, width and channels
- `estimate_prior(images)` -> `target_prior` (repeated on every row) and the predictions under
  it: calibrated Dirichlet-MAP EM (docs/design.md section 7), the graph twin of
  `lade_tf.prior_estimation.TargetPriorEstimator.estimate`, with the calibration fitted on the
  validation split and its constants baked into the graph
- `class_info(class_ids)` -> `class_names`, `source_prior`, `class_counts`, and what a tracker of
  a drifting prior needs besides the posteriors: `reference_prior` (the prior the posteriors are
  calibrated for), `reference_confusion` (row `class_id` of the soft confusion matrix of the
  calibrated validation posteriors, zeros without a validation split) and `prior_strength`, so a
  client of plain TF Serving reads them with a standard Predict call

`images` are float32 [batch, H, W, C] raw pixel values 0..255 (normalisation is inside the model),
`target_prior` float32 [batch, num_classes] (each row normalised by the layer; zeros allowed).
The metadata (class names, counts, source prior, training loss, alpha, tau, input shape,
signatures, and the prior estimator's `to_config` under "prior_estimation") is a JSON asset,
`assets/lade_metadata.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from lade_tf.layers import PriorCorrection, correction_offset
from lade_tf.prior_estimation import TargetPriorEstimator
from lade_tf.priors import source_prior
from lade_tf.records import decode_image_tensor
from lade_tf.train_config import loss_takes

METADATA_ASSET = "lade_metadata.json"
SIGNATURE_NAMES = (
    "serving_default",
    "predict_uniform",
    "predict_encoded",
    "estimate_prior",
    "class_info",
)
PREDICTION_OUTPUTS = ("probabilities", "logits", "class_ids", "posteriors")
_RESERVED_METADATA_KEYS = (
    "format",
    "class_names",
    "class_counts",
    "source_prior",
    "num_classes",
    "train_loss",
    "alpha",
    "tau",
    "input_shape",
    "input_dtype",
    "pixel_range",
    "signatures",
    "prior_estimation",
)


class _ServingModule(tf.Module):
    """Holds the logits model and the prior correction; its tf.functions are the signatures."""

    def __init__(
        self,
        model,
        correction: PriorCorrection,
        estimator: TargetPriorEstimator,
        class_counts: Sequence[int],
        class_names: Sequence[str],
        image_shape: tuple[int, int, int],
    ):
        super().__init__(name="lade_serving")
        self.model = model
        self.correction = correction
        self._estimator = estimator
        self._num_classes = len(class_counts)
        self._class_counts = [int(n) for n in class_counts]
        self._class_names = list(class_names)
        self._source_prior = source_prior(class_counts)
        self._image_shape = image_shape
        height, width, channels = image_shape
        images = tf.TensorSpec([None, height, width, channels], tf.float32, name="images")
        prior = tf.TensorSpec([None, self._num_classes], tf.float32, name="target_prior")
        image_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
        class_ids = tf.TensorSpec([None], tf.int64, name="class_ids")
        self.serving_default = tf.function(self._predict, input_signature=[images, prior])
        self.predict_uniform = tf.function(self._predict_uniform, input_signature=[images])
        self.predict_encoded = tf.function(
            self._predict_encoded, input_signature=[image_bytes, prior]
        )
        self.estimate_prior = tf.function(self._estimate_prior, input_signature=[images])
        self.class_info = tf.function(self._class_info, input_signature=[class_ids])

    def signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURE_NAMES}

    def _raw_logits(self, images):
        return tf.cast(self.model(images, training=False), tf.float32)

    def _outputs(self, raw_logits, target_prior):
        adjusted = tf.cast(self.correction(raw_logits, target_prior), tf.float32)
        return {
            "probabilities": tf.nn.softmax(adjusted, axis=-1),
            "logits": adjusted,
            "class_ids": tf.argmax(adjusted, axis=-1, output_type=tf.int64),
            # What a tracker of a drifting prior needs per image, whatever prior was sent.
            "posteriors": tf.cast(self._posteriors(raw_logits), tf.float32),
        }

    def _posteriors(self, raw_logits):
        """Calibrated posteriors for the estimator's reference prior p_r, float64 [batch, C], as
        TargetPriorEstimator.posteriors computes them: softmax(log_softmax(f + c) @ M^T + beta)."""
        offset, matrix, bias = self._estimator.posterior_map()
        log_posterior = tf.nn.log_softmax(
            tf.cast(raw_logits, tf.float64) + tf.constant(offset), axis=-1
        )
        return tf.nn.softmax(
            tf.matmul(log_posterior, tf.constant(matrix), transpose_b=True) + tf.constant(bias),
            axis=-1,
        )

    def _tiled(self, prior: np.ndarray, rows):
        row = tf.constant(np.asarray(prior, np.float32)[None, :])
        return tf.tile(row, tf.stack([rows, 1]))

    def _predict(self, images, target_prior):
        return self._outputs(self._raw_logits(images), target_prior)

    def _predict_uniform(self, images):
        uniform = np.full(self._num_classes, 1.0 / self._num_classes)
        return self._outputs(self._raw_logits(images), self._tiled(uniform, tf.shape(images)[0]))

    def _predict_encoded(self, image_bytes, target_prior):
        return self._predict(self._decode(image_bytes), target_prior)

    def _decode(self, image_bytes):
        height, width, channels = self._image_shape

        def decode_one(encoded):
            image = tf.cast(decode_image_tensor(encoded, channels), tf.float32)
            shape = tf.shape(image)
            same_size = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
            # Resizing only when needed keeps a same-size PNG bit-exact with the raw pixels.
            image = tf.cond(
                same_size,
                lambda: image,
                lambda: tf.image.resize(image, [height, width], antialias=True),
            )
            return tf.ensure_shape(image, [height, width, channels])

        return tf.map_fn(
            decode_one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32),
        )

    def _estimate_prior(self, images):
        raw = self._raw_logits(images)
        rows = tf.shape(raw)[0]
        tf.debugging.assert_positive(
            rows, message="estimate_prior needs at least one image from the target distribution"
        )
        estimator = self._estimator
        posterior = self._posteriors(raw)
        reference = tf.constant(estimator.reference_prior, tf.float64)
        strength = tf.constant(estimator.prior_strength, tf.float64)
        pseudo_counts = strength * tf.constant(estimator.source_prior, tf.float64)
        batch = tf.cast(rows, tf.float64)

        def not_converged(step, prior, change):
            return tf.logical_and(step < estimator.max_iter, change >= estimator.tol)

        def em_step(step, prior, change):
            weighted = posterior * (prior / reference)[None, :]
            responsibilities = weighted / tf.maximum(
                tf.reduce_sum(weighted, axis=1, keepdims=True), np.finfo(np.float64).tiny
            )
            updated = (tf.reduce_sum(responsibilities, axis=0) + pseudo_counts) / (batch + strength)
            return step + 1, updated, tf.reduce_max(tf.abs(updated - prior))

        _, estimate, _ = tf.while_loop(
            not_converged, em_step, (tf.constant(0), reference, tf.constant(np.inf, tf.float64))
        )
        estimate = estimate / tf.reduce_sum(estimate)
        estimate = tf.tile(tf.cast(estimate, tf.float32)[None, :], tf.stack([rows, 1]))
        outputs = self._outputs(raw, estimate)
        outputs["target_prior"] = estimate
        return outputs

    def _class_info(self, class_ids):
        checks = [
            tf.debugging.assert_non_negative(class_ids, message="class_ids must be >= 0"),
            tf.debugging.assert_less(
                class_ids,
                tf.constant(self._num_classes, tf.int64),
                message=f"class_ids must be < {self._num_classes}",
            ),
        ]
        with tf.control_dependencies(checks):  # checked before gather (a GPU gather never fails)
            class_ids = tf.identity(class_ids)
        estimator = self._estimator
        confusion = estimator.reference_confusion
        if confusion is None:  # no validation split: no soft-BBSE estimate, zeros say so
            confusion = np.zeros((self._num_classes, self._num_classes))
        return {
            "class_names": tf.gather(tf.constant(self._class_names), class_ids),
            "source_prior": tf.gather(tf.constant(self._source_prior, tf.float32), class_ids),
            "class_counts": tf.gather(tf.constant(self._class_counts, tf.int64), class_ids),
            # What a client-side tracker needs besides the served posteriors.
            "reference_prior": tf.gather(
                tf.constant(estimator.reference_prior, tf.float32), class_ids
            ),
            "reference_confusion": tf.gather(tf.constant(confusion, tf.float32), class_ids),
            "prior_strength": tf.fill(
                tf.shape(class_ids), tf.constant(estimator.prior_strength, tf.float32)
            ),
        }


def _image_shape(model) -> tuple[int, int, int]:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            f"model.input_shape = {shape}: expected (batch, height, width, channels) with known "
            "height, width and channels"
        )
    return tuple(int(d) for d in shape[1:])


def _metadata(
    class_counts,
    class_names,
    train_loss,
    alpha,
    tau,
    image_shape,
    signatures,
    estimator: TargetPriorEstimator,
    extra: Mapping[str, Any] | None,
) -> dict:
    document = {
        "format": "lade_tf.serving/1",
        "class_names": list(class_names),
        "class_counts": [int(n) for n in class_counts],
        "source_prior": source_prior(class_counts).tolist(),
        "num_classes": len(class_counts),
        "train_loss": train_loss,
        "alpha": None if alpha is None else float(alpha),
        "tau": float(tau) if loss_takes(train_loss, "tau") else None,
        "input_shape": list(image_shape),
        "input_dtype": "float32",
        "pixel_range": [0, 255],
        "signatures": {
            name: {
                "inputs": [spec.name for spec in fn.structured_input_signature[0]],
                "outputs": sorted(fn.structured_outputs),
            }
            for name, fn in signatures.items()
        },
        "prior_estimation": estimator.to_config(),
    }
    for key, value in (extra or {}).items():
        if key in document:
            raise ValueError(
                f"metadata key {key!r} is reserved; reserved keys: "
                f"{', '.join(_RESERVED_METADATA_KEYS)}"
            )
        document[key] = value
    json.dumps(document, allow_nan=False)  # fail here, not in a consumer, if not plain JSON
    return document


def export_serving_model(
    model,
    export_dir: str | os.PathLike,
    *,
    class_counts: Sequence[int],
    train_loss: str,
    tau: float = 1.0,
    class_names: Sequence[str] | None = None,
    alpha: float | None = None,
    prior_estimator: TargetPriorEstimator | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write `model` (raw pixels -> raw logits) as a prior-aware serving SavedModel.

    The SavedModel is first written to a hidden sibling directory and then renamed to
    `export_dir`, so a server polling the parent (TF Serving, `serving.server`) never sees a
    half-written version.

    Args:
        model: Keras model mapping float32 images [batch, H, W, C] with values 0..255 to raw
            logits [batch, num_classes].
        export_dir: the SavedModel directory, e.g. `<model_base_path>/<version>`; must not exist
            or be empty.
        class_counts: training images per class (defines the source prior p_s).
        train_loss: loss the model was trained with ("ce", "lade", "balanced_softmax",
            "logit_adjusted"); selects the inference rule of `PriorCorrection`.
        tau: the logit-adjusted loss's temperature (its rule is f + (tau - 1) log p_s +
            log p_t); 1.0 for every other loss. Recorded in the metadata.
        class_names: one name per class; default "0", "1", ...
        alpha: LADE regulariser weight, recorded in the metadata (None if not applicable).
        prior_estimator: the `estimate_prior` signature's estimator, an EM
            `TargetPriorEstimator` for the same counts, loss and tau, fitted on the validation
            split (calibration, default Dirichlet); its constants are baked into the graph. Default:
            uncalibrated (calibration "none") EM with the default Dirichlet prior strength.
        metadata: extra JSON-serialisable entries for the metadata asset (e.g. the training
            configuration); keys must not collide with the reserved ones.

    Returns:
        The absolute path of the written SavedModel directory.

    Raises:
        ValueError: for invalid counts, names, loss, tau, model shapes, metadata or prior
            estimator, or if `export_dir` exists and is not empty.
    """
    counts = [int(n) for n in class_counts]
    source_prior(counts)  # validates the counts, naming a bad class
    num_classes = len(counts)
    names = (
        [str(i) for i in range(num_classes)]
        if class_names is None
        else [str(name) for name in class_names]
    )
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} entries, expected {num_classes} "
            "(one per entry of class_counts)"
        )
    output_shape = tuple(model.output_shape)
    if len(output_shape) != 2 or output_shape[-1] != num_classes:
        raise ValueError(
            f"model.output_shape = {output_shape}: expected (batch, {num_classes}) "
            "logits, one per entry of class_counts"
        )
    image_shape = _image_shape(model)
    correction = PriorCorrection(counts, train_loss=train_loss, tau=tau)
    estimator = _checked_estimator(prior_estimator, counts, train_loss, tau)

    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.isdir(export_dir) and os.listdir(export_dir):
        raise ValueError(
            f"export_dir {export_dir!r} exists and is not empty; pick a new version directory"
        )
    parent, leaf = os.path.split(export_dir)
    os.makedirs(parent, exist_ok=True)

    module = _ServingModule(model, correction, estimator, counts, names, image_shape)
    signatures = module.signatures()
    document = _metadata(
        counts, names, train_loss, alpha, tau, image_shape, signatures, estimator, metadata
    )
    staging = tempfile.mkdtemp(prefix=f".{leaf}.tmp-", dir=parent)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            asset_path = os.path.join(scratch, METADATA_ASSET)
            with open(asset_path, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
            module.metadata_file = tf.saved_model.Asset(asset_path)
            tf.saved_model.save(module, staging, signatures=signatures)
        if os.path.isdir(export_dir):
            os.rmdir(export_dir)  # empty (checked above); rename cannot replace a directory
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir


def _checked_estimator(
    estimator: TargetPriorEstimator | None, counts: Sequence[int], train_loss: str, tau: float
) -> TargetPriorEstimator:
    """The estimator to bake into `estimate_prior`: the given one, checked, or the default."""
    if estimator is None:
        return TargetPriorEstimator(counts, train_loss, tau=tau, calibration="none")
    if not isinstance(estimator, TargetPriorEstimator):
        raise ValueError(f"prior_estimator = {estimator!r}: expected a TargetPriorEstimator")
    if estimator.method != "em":
        raise ValueError(
            f"prior_estimator.method = {estimator.method!r}: the estimate_prior "
            "signature runs EM; expected 'em'"
        )
    mine = (list(map(float, counts)), train_loss, float(tau))
    theirs = (estimator.class_counts, estimator.train_loss, estimator.tau)
    if mine != theirs:
        raise ValueError(
            f"prior_estimator is for (class_counts, train_loss, tau) = {theirs}: "
            f"expected the exported model's {mine}"
        )
    if not estimator.fitted:
        raise ValueError(
            f"prior_estimator with calibration = {estimator.calibration!r} is not "
            "fitted: call fit(val_logits, val_labels) on the validation split first"
        )
    return estimator


def read_serving_metadata(saved_model_dir: str | os.PathLike) -> dict:
    """The metadata JSON asset of a SavedModel written by `export_serving_model`.

    Raises:
        FileNotFoundError: if the directory has no `assets/lade_metadata.json`.
    """
    path = os.path.join(os.fspath(saved_model_dir), "assets", METADATA_ASSET)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def served_raw_logits(
    saved_model_dir: str | os.PathLike, images: np.ndarray, *, batch_size: int = 1024
) -> tuple[np.ndarray, dict]:
    """Raw logits f [N, C] float64 of a SavedModel this module wrote, and its metadata.

    Formula:
        predict_uniform returns f + b + log(1 / C), b the model's inference-rule offset
        (`lade_tf.layers.correction_offset` of the metadata's counts, loss and tau), so
        f = served - b + log C, exactly, whatever loss the model was trained with.

    Args:
        saved_model_dir: the SavedModel (a local path or any tf.io.gfile URI).
        images: float32 raw pixels [N, H, W, C].
        batch_size: images per `predict_uniform` call.

    Raises:
        FileNotFoundError / ValueError: if the directory is not such a SavedModel.
    """
    saved_model_dir = os.fspath(saved_model_dir)
    with tf.io.gfile.GFile(os.path.join(saved_model_dir, "assets", METADATA_ASSET)) as handle:
        metadata = json.load(handle)
    predict = tf.saved_model.load(saved_model_dir).signatures["predict_uniform"]
    served = np.concatenate(
        [
            predict(images=tf.constant(images[start : start + batch_size], tf.float32))[
                "logits"
            ].numpy()
            for start in range(0, len(images), batch_size)
        ]
    ).astype(np.float64)
    counts = metadata["class_counts"]
    offset = correction_offset(counts, metadata["train_loss"], float(metadata.get("tau") or 1.0))
    return served - offset[None, :] + np.log(len(counts)), metadata
