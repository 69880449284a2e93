"""ShiftEvaluator: the TFX component that evaluates every trained model under the 11 label shifts
(docs/design.md section 5) and blesses the one to push.

The component does the I/O: it computes each model's raw logits on the (balanced) test split and
on the validation split, scores them (`pipeline.shift_scoring`, which calls `lade_tf.shift_eval`),
writes `shift_report.json`, `shift_report.md` and `shift_accuracy.png` (`pipeline.shift_report`)
into its `report` artifact, and blesses the model to push (LADE by default) after checking that
its serving SavedModel answers a [batch, C] target prior exactly as the evaluated rule says, that
its `estimate_prior` signature gives the library's estimate, and that it does not fall below the
latest blessed model (its optional `baseline_model` input, from a Resolver with
LatestBlessedModelStrategy, scored on the same test images) by more than the margins
(`pipeline.blessing`); the standard TFX Pusher then pushes it.
"""

import json
import os
import tempfile
import time
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from absl import logging

# Narrow imports: `from tfx import v1` also loads the Vertex AI, BigQuery and Kubernetes clients,
# which this component never uses.
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation, ModelRun
from tfx.utils import path_utils

from pipeline.blessing import DEFAULT_MARGINS, blessing_decision, blessing_reason, check_margins
from pipeline.shift_report import write_report
from pipeline.shift_scoring import (
    LOSS_DISPLAY_NAMES,
    baseline_scores,
    compute_shift_report,
    method_scores,
)

#: Test images checked through the serving signatures before blessing.
SERVING_CHECK_IMAGES = 64


@component
def ShiftEvaluator(
    examples: InputArtifact[Examples],
    report: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    ce_model: InputArtifact[Model] = None,
    ce_model_run: InputArtifact[ModelRun] = None,
    lade_model: InputArtifact[Model] = None,
    lade_model_run: InputArtifact[ModelRun] = None,
    balanced_softmax_model: InputArtifact[Model] = None,
    balanced_softmax_model_run: InputArtifact[ModelRun] = None,
    logit_adjusted_model: InputArtifact[Model] = None,
    logit_adjusted_model_run: InputArtifact[ModelRun] = None,
    baseline_model: InputArtifact[Model] = None,
    push: Parameter[str] = "lade",
    num_seeds: Parameter[int] = 3,
    test_per_class: Parameter[int] = 0,
    margin_mean: Parameter[float] = DEFAULT_MARGINS["mean"],
    margin_uniform: Parameter[float] = DEFAULT_MARGINS["uniform"],
    margin_ece: Parameter[float] = DEFAULT_MARGINS["ece"],
    alpha_source: Parameter[str] = "",
) -> None:
    """Evaluates every trained model under the 11 label shifts and blesses the one to push.

    Args:
        examples: LongTailExampleGen output (train/val/test splits, class_info.json).
        report: receives shift_report.json, shift_report.md and shift_accuracy.png.
        blessing: `blessed` = 1 for the `push` model if it beats chance on the uniform test,
            its serving signatures reproduce the evaluated predictions and prior estimate, and
            it is within the margins of the baseline (`blessing_decision`); else 0. It records
            `current_model_id` (the pushed Model's MLMD id), as LatestBlessedModelStrategy needs.
        <loss>_model / <loss>_model_run: the Trainer outputs of each trained loss (serving
            SavedModel; raw-logits Keras model and train_config.json, whose tau gives the
            logit-adjusted model's inference rule).
        baseline_model: the latest blessed model (a Resolver with LatestBlessedModelStrategy),
            scored through its serving SavedModel on the same test images; None for the first.
            If it is the candidate itself (a rerun of an already blessed model), the candidate
            is not blessed again, so the Pusher does not push the same model twice.
        push: the loss whose model is blessed.
        num_seeds: subsampling seeds per shifted test set (seeds 0..num_seeds-1).
        test_per_class: evaluate on a seeded subset of this many test images per class (the
            protocol's m); 0 keeps the whole test split. Quick runs use it to save inference.
        margin_mean, margin_uniform: largest drop below the baseline allowed on the mean over
            the 11 distributions and on uniform accuracy (fractions: 0.01 is one point).
        margin_ece: largest rise of the uniform-test ECE over the baseline's;
            `pipeline.blessing.UNCHECKED_MARGIN` (the default) leaves ECE unchecked.
        alpha_source: where the LADE Trainer's alpha came from (flag, TrainConfig default,
            tuner), written next to the alpha in the report.
    """
    trained = {
        "ce": (ce_model, ce_model_run),
        "lade": (lade_model, lade_model_run),
        "balanced_softmax": (balanced_softmax_model, balanced_softmax_model_run),
        "logit_adjusted": (logit_adjusted_model, logit_adjusted_model_run),
    }
    trained = {loss: pair for loss, pair in trained.items() if pair[1] is not None}
    if not trained:
        raise ValueError(
            "ShiftEvaluator got no trained model: connect at least one <loss>_model_run input"
        )
    if push not in trained:
        raise ValueError(
            f"push = {push!r}: no model trained with that loss; trained: {', '.join(trained)}"
        )
    if num_seeds < 1 or test_per_class < 0:
        raise ValueError(
            f"num_seeds = {num_seeds}, test_per_class = {test_per_class}: expected "
            "num_seeds >= 1 (3 or more for a std) and test_per_class >= 0"
        )
    margins = check_margins({"mean": margin_mean, "uniform": margin_uniform, "ece": margin_ece})
    _run_shift_evaluation(
        examples,
        trained,
        report,
        blessing,
        push,
        num_seeds,
        test_per_class,
        baseline_model=baseline_model,
        margins=margins,
        alpha_source=alpha_source,
    )


def _run_shift_evaluation(
    examples,
    trained,
    report,
    blessing,
    push: str,
    num_seeds: int,
    test_per_class: int,
    *,
    baseline_model=None,
    margins: Mapping[str, float],
    alpha_source: str = "",
) -> None:
    from lade_tf.priors import subsample_by_counts
    from lade_tf.records import read_class_info

    started = time.monotonic()
    class_info = read_class_info(examples.uri)
    images, labels = _load_split(examples, "test", class_info)
    if test_per_class:
        available = np.bincount(labels, minlength=len(class_info["class_names"]))
        kept = subsample_by_counts(labels, np.minimum(available, test_per_class), seed=0)
        images, labels = images[kept], labels[kept]
    has_val = sum(class_info["counts"].get("val", [])) > 0  # pipeline.prepare allows none
    val_images, val_labels = _load_split(examples, "val", class_info) if has_val else (None, None)
    logging.info(
        "ShiftEvaluator: %d test and %d val images %s, models: %s",
        len(labels),
        0 if val_labels is None else len(val_labels),
        images.shape[1:],
        ", ".join(trained),
    )
    models = {
        loss: _load_model_run(model_run, class_info, loss)
        for loss, (_, model_run) in trained.items()
    }
    logits_by_loss = {loss: _predict(loaded.model, images) for loss, loaded in models.items()}
    val_logits_by_loss = (
        None
        if val_images is None
        else {loss: _predict(loaded.model, val_images) for loss, loaded in models.items()}
    )
    counts_by_loss = {loss: loaded.counts for loss, loaded in models.items()}
    tau_by_loss = {loss: loaded.tau for loss, loaded in models.items()}
    logging.info("ShiftEvaluator: logits done (%.0f s)", time.monotonic() - started)
    shift_report = compute_shift_report(
        logits_by_loss,
        labels,
        counts_by_loss,
        seeds=tuple(range(num_seeds)),
        val_logits_by_loss=val_logits_by_loss,
        val_labels=val_labels,
        tau_by_loss=tau_by_loss,
    )
    logging.info(
        "ShiftEvaluator: 11 distributions x %d seeds x %d methods done (%.0f s)",
        num_seeds,
        len(shift_report["methods"]),
        time.monotonic() - started,
    )

    serving = {
        loss: (
            _check_serving_model(
                model, images, logits_by_loss[loss], counts_by_loss[loss], loss, tau_by_loss[loss]
            )
            if model is not None
            else "no serving model input"
        )
        for loss, (model, _) in trained.items()
    }
    push_name = LOSS_DISPLAY_NAMES[push]
    chance = 1.0 / logits_by_loss[push].shape[1]
    candidate_model = trained[push][0]
    baseline, baseline_note = _score_baseline(
        baseline_model, candidate_model, images, labels, num_seeds, class_info
    )
    blessed, checks = blessing_decision(
        method_scores(shift_report, push_name),
        baseline,
        chance=chance,
        margins=margins,
        serving_problem=serving[push],
    )
    same_model = baseline_model is not None and _same_artifact(baseline_model, candidate_model)
    if same_model:
        blessed = False
        reason = (
            f"not blessed again: this {push_name} model (MLMD id {candidate_model.id}) is the "
            "latest blessed model already, pushed by an earlier run; nothing new to push"
        )
    else:
        reason = blessing_reason(blessed, checks, baseline_note)
    shift_report["blessing"] = {
        "model": push_name,
        "loss": push,
        "blessed": blessed,
        "reason": reason,
        "chance": chance,
        "candidate": method_scores(shift_report, push_name),
        "baseline": baseline,
        "baseline_note": baseline_note,
        "margins": dict(margins),
        "checks": checks,
        "alpha": _alpha_record(models, alpha_source),
    }
    notes = [
        f"Test split: {len(labels)} images, {logits_by_loss[push].shape[1]} classes; "
        f"shifted sets subsampled with seeds 0..{num_seeds - 1}.",
        f"Validation split: {len(val_labels)} images (the calibration of calibrated EM, BBSE)."
        if val_labels is not None
        else "No validation split: the calibrated-EM and BBSE rows are left out.",
        *[
            f"{LOSS_DISPLAY_NAMES[loss]} model ({loss}"
            + (f", tau {tau_by_loss[loss]:g}" if tau_by_loss[loss] != 1.0 else "")
            + f"): train counts {list(counts)}; serving signature check: "
            f"{serving[loss] or 'ok'}"
            for loss, counts in counts_by_loss.items()
        ],
        f"Model to push: {push_name} ({push}), {'BLESSED' if blessed else 'NOT blessed'} "
        "(see Blessing).",
    ]
    _write_report_artifact(shift_report, report.uri, notes)
    _write_blessing(
        blessing,
        candidate_model,
        blessed,
        reason,
        baseline_model=baseline_model,
        already_blessed=same_model,
    )
    logging.info(
        "ShiftEvaluator: report in %s; %s %s (%s); %.0f s in all",
        report.uri,
        push,
        "blessed" if blessed else "NOT blessed",
        reason,
        time.monotonic() - started,
    )


def _load_split(examples, split: str, class_info: Mapping[str, Any]):
    """All images [N, H, W, C] float32 and labels [N] int64 of one split of an Examples artifact."""
    from lade_tf.records import parse_dataset, split_file_pattern

    shape = (int(class_info["height"]), int(class_info["width"]), int(class_info["channels"]))
    dataset = parse_dataset(split_file_pattern(examples.uri, split), shape).batch(1024)
    images, labels = [], []
    for batch_images, batch_labels in dataset.as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
    if not labels:
        raise ValueError(f"split {split!r} of {examples.uri} has no examples")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _load_model_run(model_run, class_info: Mapping[str, Any], loss: str) -> "_LoadedModel":
    """The raw-logits Keras model, train class counts [C], inference-rule tau and (LADE) alpha of
    the Trainer output in model_run."""
    import keras
    import tensorflow as tf

    import lade_tf.layers  # noqa: F401  (registers the serialisable custom objects)
    import lade_tf.losses  # noqa: F401
    import lade_tf.models  # noqa: F401
    from lade_tf.records import CLASS_INFO_FILE
    from lade_tf.train_config import TrainConfig
    from pipeline.trainer import MODEL_FILE, TRAIN_CONFIG_FILE

    paths = {
        name: os.path.join(model_run.uri, name)
        for name in (MODEL_FILE, TRAIN_CONFIG_FILE, CLASS_INFO_FILE)
    }
    for name in (MODEL_FILE, TRAIN_CONFIG_FILE):
        if not tf.io.gfile.exists(paths[name]):
            raise FileNotFoundError(
                f"{paths[name]} not found: expected the {loss} Trainer's {name} "
                "(pipeline.trainer.run_fn writes it)"
            )
    model = keras.models.load_model(paths[MODEL_FILE], compile=False)
    with tf.io.gfile.GFile(paths[TRAIN_CONFIG_FILE]) as handle:
        config = TrainConfig.from_dict(json.load(handle))
    # The counts the model was trained on (its source prior), as the Trainer recorded them.
    if tf.io.gfile.exists(paths[CLASS_INFO_FILE]):
        with tf.io.gfile.GFile(paths[CLASS_INFO_FILE]) as handle:
            class_info = json.load(handle)
    counts = [int(n) for n in class_info["counts"]["train"]]
    return _LoadedModel(model, counts, config.inference_tau, config.lade_alpha)


class _LoadedModel(NamedTuple):
    """A Trainer's raw-logits model with what its inference rule needs, and LADE's alpha."""

    model: Any
    counts: list[int]
    tau: float
    alpha: float | None


def _alpha_record(models: Mapping[str, "_LoadedModel"], source: str) -> dict[str, Any] | None:
    """{"value", "source"} of the LADE model's alpha, None without a LADE model."""
    if "lade" not in models or models["lade"].alpha is None:
        return None
    return {"value": models["lade"].alpha, "source": source or "not recorded"}


def _same_artifact(first, second) -> bool:
    """Whether two artifacts are the same MLMD artifact (by id, else by URI)."""
    if first is None or second is None:
        return False
    if first.id and second.id:
        return first.id == second.id
    return first.uri.rstrip("/") == second.uri.rstrip("/")


def _score_baseline(
    baseline_model, candidate_model, images, labels, num_seeds: int, class_info
) -> tuple[dict[str, Any] | None, str]:
    """(scores of the baseline's known-prior row on these test images, a note on it).

    None with the note when there is no baseline, it is the candidate itself, or it cannot be
    compared (other classes or image size, or its SavedModel does not load).
    """
    from lade_tf.export import served_raw_logits

    if baseline_model is None:
        return None, "no blessed model yet: the first is blessed if it beats chance"
    if _same_artifact(baseline_model, candidate_model):
        return None, "the baseline is this model"
    serving_dir = path_utils.serving_model_path(baseline_model.uri)
    try:
        logits, metadata = served_raw_logits(serving_dir, images)
    except Exception as error:  # an unreadable baseline is reported, the candidate still judged
        return None, f"baseline {serving_dir} not scored: {type(error).__name__}: {error}"
    shape = [int(class_info[k]) for k in ("height", "width", "channels")]
    if list(metadata.get("input_shape", [])) != shape or logits.shape[1] != len(
        class_info["class_names"]
    ):
        return None, (
            f"baseline {serving_dir} not comparable: input {metadata.get('input_shape')} and "
            f"{logits.shape[1]} classes vs {shape} and {len(class_info['class_names'])}"
        )
    scores = baseline_scores(logits, labels, metadata, range(num_seeds))
    return {
        "model_id": int(baseline_model.id or 0),
        "uri": baseline_model.uri,
        **scores,
    }, f"baseline: the latest blessed model, MLMD id {baseline_model.id}"


def _predict(model, images: np.ndarray) -> np.ndarray:
    """Raw logits [N, C] float64 of a Keras model on images [N, H, W, C]."""
    return np.asarray(model.predict(images, batch_size=1024, verbose=0), dtype=np.float64)


def _check_serving_model(
    model_artifact,
    images: np.ndarray,
    logits: np.ndarray,
    counts: Sequence[int],
    loss: str,
    tau: float = 1.0,
) -> str:
    """'' if the serving SavedModel answers a [batch, C] uniform prior like the evaluated rule and
    its estimate_prior signature gives the estimate its recorded estimator computes, else what
    went wrong."""
    import tensorflow as tf

    from lade_tf.export import METADATA_ASSET
    from lade_tf.layers import adjust_logits_numpy
    from lade_tf.prior_estimation import TargetPriorEstimator

    serving_dir = path_utils.serving_model_path(model_artifact.uri)
    batch = images[:SERVING_CHECK_IMAGES]
    num_classes = logits.shape[1]
    prior = np.full((len(batch), num_classes), 1.0 / num_classes, dtype=np.float32)
    try:
        loaded = tf.saved_model.load(serving_dir)
        outputs = loaded.signatures["serving_default"](
            images=tf.constant(batch, tf.float32), target_prior=tf.constant(prior)
        )
        estimated = loaded.signatures["estimate_prior"](images=tf.constant(batch, tf.float32))
        # tf.io.gfile: the artifact may live on gs:// (Kubeflow / Vertex).
        with tf.io.gfile.GFile(os.path.join(serving_dir, "assets", METADATA_ASSET)) as handle:
            estimator = TargetPriorEstimator.from_config(json.load(handle)["prior_estimation"])
    except Exception as error:  # any load or call failure means the model must not be pushed
        return f"serving signatures failed on {serving_dir}: {type(error).__name__}: {error}"
    expected = adjust_logits_numpy(logits[: len(batch)], counts, loss, prior, tau=tau)
    served = outputs["logits"].numpy().astype(np.float64)
    gap = float(np.max(np.abs(served - expected)))
    if not gap < 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
        return f"served logits differ from the evaluated ones by up to {gap:.3g}"
    if not np.array_equal(outputs["class_ids"].numpy(), np.argmax(served, axis=1)):
        return "served class_ids are not the argmax of the served logits"
    if (estimator.train_loss, estimator.tau) != (loss, tau):
        return (
            f"estimate_prior was exported for ({estimator.train_loss}, tau "
            f"{estimator.tau:g}), the model is ({loss}, tau {tau:g})"
        )
    served_prior = estimated["target_prior"].numpy()[0].astype(np.float64)
    prior_gap = float(np.abs(served_prior - estimator.estimate(logits[: len(batch)])).max())
    if not prior_gap < 1e-4:
        return f"served estimate_prior differs from the library estimate by up to {prior_gap:.3g}"
    return ""


def _write_report_artifact(shift_report: Mapping[str, Any], uri: str, notes: Sequence[str]) -> None:
    """write_report into the artifact URI, through a local folder: the URI may be gs://."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as local:
        paths = write_report(shift_report, local, notes=notes)
        tf.io.gfile.makedirs(uri)
        for name, path in paths.items():
            tf.io.gfile.copy(path, os.path.join(uri, name), overwrite=True)


def _write_blessing(
    blessing,
    model_artifact,
    blessed: bool,
    reason: str,
    *,
    baseline_model=None,
    already_blessed: bool = False,
) -> None:
    """Marks the ModelBlessing the way TFX's Evaluator does, so the stock Pusher reads it and
    LatestBlessedModelStrategy finds the model (`blessed`, `current_model_id`)."""
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", reason)
    blessing.set_int_custom_property("already_blessed", int(already_blessed))
    if model_artifact is not None:
        blessing.set_string_custom_property("current_model", model_artifact.uri)
        blessing.set_int_custom_property("current_model_id", model_artifact.id or 0)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id or 0)
    import tensorflow as tf  # tf.io.gfile: artifact URIs may be gs:// (Kubeflow / Vertex)

    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(
        os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w"
    ):
        pass
