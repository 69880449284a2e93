"""The TFX Tuner module file: a KerasTuner search over LADE's alpha (and optionally lambda),
scored under label shift (`Tuner(tuner_fn="pipeline.tuner.tuner_fn")`).

Each trial trains LADE with `lade_tf.tf_training.train_model` and scores the model by its mean
accuracy over the 11 shifted versions of the VAL split with the known target prior, and the
standard error of that mean over the val split (`lade_tf.shift_eval.mean_shift_accuracy`, the
protocol the evaluator runs on test; the test split is never read here). Search space, algorithms
and defaults: `pipeline.tuning_config`. Hyperband's trials get their epoch budget from Hyperband
and train from scratch.

`tuner_fn` reads custom_config {"train_config": TrainConfig dict, "tuner": TuningConfig dict}
(the tuning options may also sit at the top level of custom_config). TFX writes the best
hyper-parameters (read by `pipeline.trainer.run_fn`) and `tuner_results.json`; the trial table
(`pipeline.trial_report`) goes to `results_dir`, which `pipeline.training_components.LadeTuner`
points at its `tuner_results` artifact (KerasTuner's project directory sits in a folder TFX
deletes). KerasTuner's distributed mode (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP/PORT) works
unchanged. The command line `python -m pipeline.tuner` is `pipeline.cli`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import keras_tuner
import numpy as np

from pipeline.trial_report import trial_table, write_trial_table
from pipeline.tuning_config import (
    OBJECTIVE,
    OBJECTIVE_STANDARD_ERROR,
    TUNED_RANGE,
    TUNERS,
    TuningConfig,
)

if TYPE_CHECKING:
    from tfx.components.trainer.fn_args_utils import FnArgs
    from tfx.components.tuner.component import TunerFnResult


def search_space(tune_lambda: bool = False) -> keras_tuner.HyperParameters:
    """alpha (and remine_lambda if tune_lambda), log-uniform in TUNED_RANGE, default 0.1."""
    hp = keras_tuner.HyperParameters()
    hp.Float("alpha", *TUNED_RANGE, sampling="log", default=0.1)
    if tune_lambda:
        hp.Float("remine_lambda", *TUNED_RANGE, sampling="log", default=0.1)
    return hp


def make_oracle(
    tuning: TuningConfig, epochs: int, hyperparameters: keras_tuner.HyperParameters, seed: int
) -> keras_tuner.Oracle:
    """The KerasTuner oracle of `tuning.tuner`, maximising OBJECTIVE.

    Hyperband ignores max_trials: its brackets over `epochs` (factor 3) set the trial count.
    """
    common = {
        "objective": keras_tuner.Objective(OBJECTIVE, direction="max"),
        "hyperparameters": hyperparameters,
        "seed": seed,
        "allow_new_entries": False,
        "tune_new_entries": False,
    }
    oracles = {
        "random": lambda: keras_tuner.oracles.RandomSearchOracle(
            max_trials=tuning.max_trials, **common
        ),
        "bayesian": lambda: keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=tuning.max_trials, **common
        ),
        "hyperband": lambda: keras_tuner.oracles.HyperbandOracle(
            max_epochs=max(1, int(epochs)), factor=3, **common
        ),
    }
    assert tuple(oracles) == TUNERS  # TuningConfig checked the name against TUNERS
    return oracles[tuning.tuner]()


class ShiftAccuracyTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Trains LADE per trial and reports the mean shifted-val accuracy as OBJECTIVE.

    Every trial also reports the objective's standard error over the val split
    (OBJECTIVE_STANDARD_ERROR) and the 11 per-distribution accuracies ("F50" ... "B50").

    Args:
        oracle: from `make_oracle`.
        config: the TrainConfig of every trial; the trial sets alpha (and remine_lambda), the loss
            is always "lade", and Hyperband sets epochs.
        train_files, eval_files: file patterns of the train and val splits.
        results_dir: where trials.json / trials.md / trials.png are written at the end (None: the
            tuner's project directory).
        **kwargs: `BaseTuner` arguments (directory, project_name, overwrite, ...).
    """

    def __init__(
        self,
        oracle: keras_tuner.Oracle,
        *,
        config,
        train_files: Sequence[str],
        eval_files: Sequence[str],
        results_dir: str | os.PathLike | None = None,
        **kwargs,
    ):
        super().__init__(oracle, **kwargs)
        self.config = dataclasses.replace(config, loss="lade")
        self.train_files = list(train_files)
        self.eval_files = list(eval_files)
        self.results_dir = os.fspath(results_dir) if results_dir is not None else self.project_dir
        self._strategy = None

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        import keras

        from lade_tf import tf_training
        from lade_tf.priors import SHIFT_NAMES
        from lade_tf.shift_eval import evaluate_under_shift, mean_shift_accuracy
        from pipeline.trainer import training_data

        keras.backend.clear_session()
        if self._strategy is None:
            self._strategy = tf_training.make_strategy(self.config.strategy)
        # A trial trains its alpha / remine_lambda, for Hyperband's epoch budget if it sets one.
        config = self.config.with_hyperparameters(trial.hyperparameters.values, tuner_epochs=True)
        trial_dir = self.get_trial_dir(trial.trial_id)
        data = training_data(config, self.train_files, self.eval_files)
        if data.val is None:
            raise keras_tuner.errors.FatalError(
                f"{self.eval_files}: the val split is empty; tuning needs balanced val examples "
                "(prepare the data with val_per_class > 0)"
            )
        model = tf_training.train_model(
            config,
            data.train,
            data.val,
            data.class_counts,
            data.image_shape,
            os.path.join(trial_dir, "checkpoints"),
            os.path.join(trial_dir, "logs"),
            strategy=self._strategy,
        )
        logits = np.concatenate([model(images, training=False).numpy() for images, _ in data.val])
        labels = np.concatenate([labels.numpy() for _, labels in data.val])
        shifted = evaluate_under_shift(logits, labels, data.class_counts, "lade")
        mean, standard_error = mean_shift_accuracy(logits, labels, data.class_counts, "lade")
        return {
            OBJECTIVE: mean,
            OBJECTIVE_STANDARD_ERROR: standard_error,
            **{name: shifted[name]["mean"] for name in SHIFT_NAMES},
        }

    def on_search_end(self) -> None:
        super().on_search_end()
        write_trial_table(trial_table(self), self.results_dir)


def make_tuner(
    config,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    tuning: TuningConfig,
    *,
    directory: str | os.PathLike,
    overwrite: bool = False,
) -> ShiftAccuracyTuner:
    """The tuner searching LADE's alpha (and lambda) for a TrainConfig and examples.

    Args:
        config: TrainConfig of the trials (the loss is forced to "lade").
        train_files, eval_files: train and val split file patterns.
        tuning: the search (`pipeline.tuning_config.TuningConfig`); its `trial_epochs` replaces
            the config's epochs, its `results_dir` (default: the project directory) receives
            the trial table.
        directory: KerasTuner's working directory (trial state, checkpoints, logs).
        overwrite: start afresh instead of resuming a search found in directory.
    """
    if tuning.trial_epochs is not None:
        config = dataclasses.replace(config, epochs=tuning.trial_epochs)
    oracle = make_oracle(tuning, config.epochs, search_space(tuning.tune_lambda), config.seed)
    return ShiftAccuracyTuner(
        oracle,
        config=config,
        train_files=train_files,
        eval_files=eval_files,
        results_dir=tuning.results_dir,
        directory=os.fspath(directory),
        project_name="lade_alpha",
        overwrite=overwrite,
    )


def tuning_options(custom_config: Mapping[str, Any]) -> TuningConfig:
    """The TuningConfig of a Tuner custom_config: nested under "tuner" or at the top level.

    Raises:
        ValueError: for a missing train_config or unknown keys (named in the message).
    """
    custom = dict(custom_config or {})
    if "train_config" not in custom:
        raise ValueError(
            f"Tuner custom_config keys {sorted(custom)}: expected 'train_config' "
            "(a TrainConfig dict)"
        )
    options = custom.pop("tuner") if isinstance(custom.get("tuner"), Mapping) else {}
    custom.pop("train_config")
    return TuningConfig.from_dict({**custom, **options})


def tuner_fn(fn_args: "FnArgs") -> "TunerFnResult":
    """TFX Tuner entry point: the shift-accuracy tuner over LADE's alpha.

    Args:
        fn_args: TFX FnArgs. Used: train_files, eval_files (the val split), working_dir and
            custom_config {"train_config": TrainConfig dict, "tuner": TuningConfig dict}
            (options optional).

    Returns:
        TunerFnResult(tuner, fit_kwargs={}); the tuner holds its data.
    """
    from tfx.components.tuner.component import TunerFnResult

    from lade_tf.train_config import TrainConfig

    tuning = tuning_options(fn_args.custom_config)
    config = TrainConfig.from_dict(fn_args.custom_config["train_config"])
    tuner = make_tuner(
        config, fn_args.train_files, fn_args.eval_files, tuning, directory=fn_args.working_dir
    )
    return TunerFnResult(tuner=tuner, fit_kwargs={})


if __name__ == "__main__":
    from pipeline.cli import tuner_main

    sys.exit(tuner_main())
