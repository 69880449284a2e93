"""The TFX Trainer module file: `run_fn` (`Trainer(run_fn="pipeline.trainer.run_fn")`).

`run_fn` reads the TrainConfig from `custom_config["train_config"]`, applies the Tuner's best
hyper-parameters when there are any, trains with `lade_tf.tf_training.train_model` on the train
split (validating on the eval split, the balanced `val` split in this pipeline) and writes:

- `fn_args.serving_model_dir`: the serving SavedModel (`lade_tf.export.export_serving_model`),
  with the inference rule of the trained loss (tau included) and an `estimate_prior` signature
  whose calibration (Dirichlet) is fitted on the validation split (`prior_estimator`);
- `fn_args.model_run_dir`: `model.keras` (raw pixels -> raw logits, float32, uncompiled),
  `train_config.json` (the config actually trained, tuned values included), a copy of the
  examples' `class_info.json`, `history.json` (metrics per epoch) and TensorBoard logs in `logs/`.

Checkpoints go to `custom_config["checkpoint_dir"]` if given, else to
`<pipeline root>/<Trainer id>/checkpoints/<key>`, where the key hashes the config and the input
files: a Trainer execution that was interrupted and is run again (same config, same examples)
resumes from its last epoch although TFX gives every execution a new `model_run_dir`.

`train_and_save` is the same training outside TFX: `python -m pipeline.trainer --examples-dir DIR
--output-dir OUT [training flags]` (its command line is `pipeline.cli`), which is also how
multi-worker training runs: the same command on every worker with its TF_CONFIG and `--strategy
multi_worker`; the chief writes the outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from lade_tf.records import CLASS_INFO_FILE

if TYPE_CHECKING:
    from tfx.components.trainer.fn_args_utils import FnArgs

EVAL_BATCH_SIZE = 256
CUSTOM_CONFIG_KEYS = ("train_config", "checkpoint_dir")
MODEL_FILE = "model.keras"
TRAIN_CONFIG_FILE = "train_config.json"


def examples_dir_from_files(file_patterns: Sequence[str]) -> str:
    """The Examples artifact URI of split file patterns like `<uri>/Split-train/*`.

    Raises:
        ValueError: if there are no patterns, they name different artifacts, or the directory
            holds no class_info.json.
    """
    import tensorflow as tf

    if not file_patterns:
        raise ValueError("no input file patterns: expected e.g. ['<examples>/Split-train/*']")
    directories = {os.path.dirname(os.path.dirname(p)) for p in file_patterns}
    if len(directories) != 1:
        raise ValueError(
            f"file patterns {list(file_patterns)} come from several example "
            f"directories {sorted(directories)}: expected one Examples artifact"
        )
    directory = directories.pop()
    if not tf.io.gfile.exists(os.path.join(directory, CLASS_INFO_FILE)):
        raise ValueError(
            f"{directory} (from {file_patterns[0]!r}) has no {CLASS_INFO_FILE}: "
            "expected the examples written by LongTailExampleGen or pipeline.prepare"
        )
    return directory


def default_checkpoint_dir(model_run_dir: str, config, train_files: Sequence[str]) -> str:
    """`<pipeline root>/<Trainer id>/checkpoints/<key>`: stable across executions of a Trainer."""
    key = hashlib.sha256(
        json.dumps([config.to_dict(), sorted(train_files)], sort_keys=True).encode()
    ).hexdigest()[:16]
    component_dir = os.path.dirname(os.path.dirname(model_run_dir.rstrip("/")))
    return os.path.join(component_dir, "checkpoints", key)


class TrainingData(NamedTuple):
    """An Examples artifact ready for `lade_tf.tf_training.train_model`."""

    info: dict  # class_info.json
    image_shape: tuple[int, int, int]
    class_counts: list[int]  # training images per class
    train: Any  # tf.data.Dataset of augmented global batches
    val: Any  # tf.data.Dataset of val batches, None if val is empty


def training_data(config, train_files: Sequence[str], eval_files: Sequence[str]) -> TrainingData:
    """class_info, shape, counts and the train / val datasets of a config's examples."""
    from lade_tf import tf_training
    from lade_tf.records import read_class_info

    info = read_class_info(examples_dir_from_files(train_files))
    image_shape = (int(info["height"]), int(info["width"]), int(info["channels"]))
    train = tf_training.train_dataset(
        list(train_files),
        image_shape,
        config.batch_size,
        augment=config.augment,
        seed=config.seed,
        max_examples=config.max_train_examples,
    )
    has_val = sum(info["counts"].get("val", [])) > 0  # pipeline.prepare allows val_per_class=0
    val = (
        tf_training.eval_dataset(list(eval_files), image_shape, EVAL_BATCH_SIZE)
        if has_val
        else None
    )
    return TrainingData(info, image_shape, [int(n) for n in info["counts"]["train"]], train, val)


def prior_estimator(
    model,
    val,
    class_counts: Sequence[int],
    loss: str,
    tau: float,
    *,
    calibration: str | None = None,
):
    """The served model's target-prior estimator, calibrated on the validation split.

    Args:
        model: the trained raw-logits model.
        val: the val split's tf.data batches of (images, labels), or None when it is empty.
        class_counts, loss, tau: the model's training counts, loss and tau.
        calibration: default `lade_tf.calibration.DEFAULT_CALIBRATION`.

    Returns:
        A fitted EM `TargetPriorEstimator`. Without val data, or if the calibration cannot be
        fitted there (logged as a warning), it is the uncalibrated one (calibration "none"); the
        served metadata records which.
    """
    import numpy as np
    from absl import logging

    from lade_tf.calibration import DEFAULT_CALIBRATION
    from lade_tf.prior_estimation import TargetPriorEstimator

    calibration = calibration or DEFAULT_CALIBRATION
    uncalibrated = TargetPriorEstimator(class_counts, loss, tau=tau, calibration="none")
    if val is None:
        logging.warning("No validation split: estimate_prior is not calibrated")
        return uncalibrated
    logits, labels = [], []
    for images, batch_labels in val:
        logits.append(np.asarray(model(images, training=False), np.float64))
        labels.append(np.asarray(batch_labels, np.int64))
    try:
        return TargetPriorEstimator(class_counts, loss, tau=tau, calibration=calibration).fit(
            np.concatenate(logits), np.concatenate(labels)
        )
    except ValueError as error:
        logging.warning(
            "estimate_prior is not calibrated: %s calibration failed on the validation split: %s",
            calibration,
            error,
        )
        return uncalibrated


def train_and_save(
    config,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    *,
    serving_model_dir: str,
    model_run_dir: str,
    checkpoint_dir: str,
    strategy=None,
) -> None:
    """Trains a config on the examples' train files and writes the serving and run outputs.

    Args:
        config: the TrainConfig to train.
        train_files, eval_files: file patterns of the train and validation splits.
        serving_model_dir: where the serving SavedModel goes.
        model_run_dir: where model.keras, train_config.json, class_info.json, history.json and
            TensorBoard logs go.
        checkpoint_dir: per-epoch checkpoints (resumed when present).
        strategy: a strategy already made (must be for "multi_worker"); default from the config.
    """
    import tensorflow as tf

    from lade_tf import tf_training
    from lade_tf.export import export_serving_model

    # Created before any dataset: MultiWorkerMirroredStrategy must come first.
    strategy = strategy or tf_training.make_strategy(config.strategy)
    data = training_data(config, train_files, eval_files)
    model = tf_training.train_model(
        config,
        data.train,
        data.val,
        data.class_counts,
        data.image_shape,
        checkpoint_dir,
        os.path.join(model_run_dir, "logs"),
        strategy=strategy,
    )
    if not tf_training.is_chief(strategy):
        return
    tau = config.inference_tau
    export_serving_model(
        model,
        serving_model_dir,
        class_counts=data.class_counts,
        train_loss=config.loss,
        tau=tau,
        class_names=data.info.get("class_names"),
        alpha=config.lade_alpha,
        prior_estimator=prior_estimator(model, data.val, data.class_counts, config.loss, tau),
        metadata={"train_config": config.to_dict()},
    )
    tf.io.gfile.makedirs(model_run_dir)
    model.save(os.path.join(model_run_dir, MODEL_FILE))
    with tf.io.gfile.GFile(os.path.join(model_run_dir, TRAIN_CONFIG_FILE), "w") as handle:
        json.dump(config.to_dict(), handle, indent=1)
    with tf.io.gfile.GFile(os.path.join(model_run_dir, CLASS_INFO_FILE), "w") as handle:
        json.dump(data.info, handle, indent=1)
    with tf.io.gfile.GFile(os.path.join(model_run_dir, tf_training.HISTORY_FILE), "w") as handle:
        json.dump(tf_training.read_history(checkpoint_dir), handle, indent=1)


def run_fn(fn_args: "FnArgs") -> None:
    """TFX Trainer entry point: trains `custom_config["train_config"]` and writes the model.

    Args:
        fn_args: TFX FnArgs. Used: train_files, eval_files (the val split), custom_config
            {"train_config": TrainConfig.to_dict(), optional "checkpoint_dir"}, hyperparameters
            (from a Tuner, optional), serving_model_dir, model_run_dir. Epochs come from the
            TrainConfig; train_steps / eval_steps are not used.

    Raises:
        ValueError: for a missing train_config, unknown custom_config keys, or bad examples.
    """
    from absl import logging

    from lade_tf.train_config import TrainConfig

    custom = dict(fn_args.custom_config or {})
    unknown = sorted(set(custom) - set(CUSTOM_CONFIG_KEYS))
    if unknown or "train_config" not in custom:
        raise ValueError(
            f"Trainer custom_config keys {sorted(custom)}: expected "
            f"'train_config' (a TrainConfig dict) and optionally 'checkpoint_dir'"
        )
    config = TrainConfig.from_dict(custom["train_config"]).with_hyperparameters(
        fn_args.hyperparameters
    )
    checkpoint_dir = custom.get("checkpoint_dir") or default_checkpoint_dir(
        fn_args.model_run_dir, config, fn_args.train_files
    )
    logging.info("Training %s; checkpoints in %s", config, checkpoint_dir)
    train_and_save(
        config,
        fn_args.train_files,
        fn_args.eval_files,
        serving_model_dir=fn_args.serving_model_dir,
        model_run_dir=fn_args.model_run_dir,
        checkpoint_dir=checkpoint_dir,
    )


if __name__ == "__main__":
    from pipeline.cli import trainer_main

    sys.exit(trainer_main())
