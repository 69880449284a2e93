"""KerasTuner search over LADE's alpha (and optionally lambda), scored under label shift.

Each trial trains LADE with `lade_tf.training.train_model` and scores the model by its mean
accuracy over the 11 shifted versions of the VAL split with the known target prior
(`lade_tf.shift_eval.evaluate_under_shift`, the same protocol the evaluator runs on test; the test
split is never read here). Search space: alpha log-uniform in [0.01, 1], lambda (`remine_lambda`)
log-uniform in [0.01, 1] when asked. Algorithms: KerasTuner's random search, Bayesian optimisation
or Hyperband (whose trials get their epoch budget from Hyperband and train from scratch).

- TFX: `Tuner(tuner_fn="pipeline.tuner.tuner_fn", custom_config={"train_config": TrainConfig dict,
  "tuner": {"tuner": "random", "max_trials": 8, "tune_lambda": False, "trial_epochs": None,
  "results_dir": None}})` (the options may also sit at the top level of custom_config). TFX writes
  the best hyper-parameters (read by `pipeline.trainer.run_fn`) and `tuner_results.json`. The
  pipeline uses `pipeline.components.LadeTuner`, which sets `results_dir` to its `tuner_results`
  artifact: without one, the table goes to KerasTuner's project directory, which TFX deletes.
- CLI: `python -m pipeline.tuner --examples-dir DIR [--tuner random --max-trials N] [training
  flags]` prints the trial table and the best alpha.
Both write the trial table as `trials.json` and `trials.md`, and a plot of the objective against
alpha as `trials.png`, to the results directory.
KerasTuner's distributed mode (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP/PORT) works unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import keras_tuner
import numpy as np

if TYPE_CHECKING:
    from tfx.components.trainer.fn_args_utils import FnArgs
    from tfx.components.tuner.component import TunerFnResult

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_shift_accuracy"
TUNED_RANGE = (0.01, 1.0)
TUNER_OPTIONS = ("tuner", "max_trials", "tune_lambda", "trial_epochs", "results_dir")
TRIALS_JSON = "trials.json"
TRIALS_MARKDOWN = "trials.md"
TRIALS_PLOT = "trials.png"
TRIAL_FILES = (TRIALS_JSON, TRIALS_MARKDOWN, TRIALS_PLOT)


def search_space(tune_lambda: bool = False) -> keras_tuner.HyperParameters:
    """alpha (and remine_lambda if tune_lambda), log-uniform in [0.01, 1], default 0.1."""
    hp = keras_tuner.HyperParameters()
    hp.Float("alpha", *TUNED_RANGE, sampling="log", default=0.1)
    if tune_lambda:
        hp.Float("remine_lambda", *TUNED_RANGE, sampling="log", default=0.1)
    return hp


def make_oracle(
    name: str, max_trials: int, epochs: int, hyperparameters: keras_tuner.HyperParameters, seed: int
) -> keras_tuner.Oracle:
    """The KerasTuner oracle for an algorithm name, maximising OBJECTIVE.

    Hyperband ignores max_trials: its brackets over `epochs` (factor 3) set the trial count.

    Raises:
        ValueError: for an unknown name or max_trials < 1.
    """
    if name not in TUNERS:
        raise ValueError(f"tuner = {name!r}: expected one of {TUNERS}")
    if int(max_trials) < 1:
        raise ValueError(f"max_trials = {max_trials!r}: expected an integer >= 1")
    objective = keras_tuner.Objective(OBJECTIVE, direction="max")
    common = {
        "objective": objective,
        "hyperparameters": hyperparameters,
        "seed": seed,
        "allow_new_entries": False,
        "tune_new_entries": False,
    }
    if name == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=int(max_trials), **common)
    if name == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=int(max_trials), **common)
    return keras_tuner.oracles.HyperbandOracle(max_epochs=max(1, int(epochs)), factor=3, **common)


class ShiftAccuracyTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Trains LADE per trial and reports the mean shifted-val accuracy as `val_shift_accuracy`.

    Every trial also reports the 11 per-distribution accuracies (metrics "F50" ... "B50").

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

        from lade_tf import training
        from lade_tf.priors import SHIFT_NAMES
        from lade_tf.shift_eval import evaluate_under_shift
        from pipeline.trainer import training_data

        keras.backend.clear_session()
        if self._strategy is None:
            self._strategy = training.make_strategy(self.config.strategy)
        # A trial trains its alpha / remine_lambda, for Hyperband's epoch budget if it sets one.
        config = self.config.with_hyperparameters(trial.hyperparameters.values, tuner_epochs=True)
        trial_dir = self.get_trial_dir(trial.trial_id)
        data = training_data(config, self.train_files, self.eval_files)
        if data.val is None:
            raise keras_tuner.errors.FatalError(
                f"{self.eval_files}: the val split is empty; tuning needs balanced val examples "
                "(prepare the data with val_per_class > 0)"
            )
        model = training.train_model(
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
        metrics = {name: shifted[name]["mean"] for name in SHIFT_NAMES}
        return {OBJECTIVE: float(np.mean(list(metrics.values()))), **metrics}

    def on_search_end(self) -> None:
        super().on_search_end()
        write_trial_table(trial_table(self), self.results_dir)


def trial_table(tuner: keras_tuner.engine.base_tuner.BaseTuner) -> list[dict[str, Any]]:
    """One row per finished trial, best first: trial_id, status, hyper-parameters, scores."""
    from lade_tf.priors import SHIFT_NAMES

    rows = []
    for trial in tuner.oracle.trials.values():
        row = {"trial_id": trial.trial_id, "status": str(trial.status), OBJECTIVE: trial.score}
        row.update({k: v for k, v in trial.hyperparameters.values.items()})
        for name in SHIFT_NAMES:
            if trial.metrics.exists(name):
                row[name] = float(trial.metrics.get_last_value(name))
        rows.append(row)
    return sorted(rows, key=lambda r: (r[OBJECTIVE] is None, -(r[OBJECTIVE] or 0.0)))


def trial_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The trial table as Markdown, accuracies in percent."""
    if not rows:
        return "(no trials)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    percent = {OBJECTIVE} | {c for c in columns if c[:1] in "FUB" and c[1:].isdigit() or c == "U"}

    def cell(column, value):
        if value is None:
            return "-"
        if column in percent:
            return f"{100 * value:.2f}"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_trials(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes a PNG of the objective (mean shifted-val accuracy, %) against alpha, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r.get(OBJECTIVE) is not None and r.get("alpha") is not None]
    figure, axis = plt.subplots(figsize=(6, 4))
    if scored:
        alphas = [float(r["alpha"]) for r in scored]
        scores = [100 * float(r[OBJECTIVE]) for r in scored]
        axis.scatter(alphas, scores, color="tab:blue", zorder=2)
        best = max(range(len(scored)), key=lambda i: scores[i])
        axis.scatter([alphas[best]], [scores[best]], color="tab:red", zorder=3, label="best trial")
        for alpha, score, row in zip(alphas, scores, scored):
            axis.annotate(
                str(row["trial_id"]),
                (alpha, score),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        axis.legend(fontsize=8)
    axis.set_xscale("log")
    axis.set_xlim(TUNED_RANGE[0] / 1.25, TUNED_RANGE[1] * 1.25)  # the whole search range
    axis.set_xlabel("alpha (LADER weight)")
    axis.set_ylabel("mean accuracy over the 11 shifted val sets (%)")
    axis.set_title(f"{len(scored)} trials")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.fspath(path))
    plt.close(figure)


def write_trial_table(rows: Sequence[Mapping[str, Any]], directory: str | os.PathLike) -> None:
    """Writes trials.json, trials.md (accuracies in percent) and trials.png into directory
    (a local path or any tf.io.gfile URI)."""
    import tempfile

    import tensorflow as tf

    directory = os.fspath(directory)
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, TRIALS_JSON), "w") as handle:
        json.dump(list(rows), handle, indent=1)
    with tf.io.gfile.GFile(os.path.join(directory, TRIALS_MARKDOWN), "w") as handle:
        handle.write(trial_table_markdown(rows))
    with tempfile.TemporaryDirectory() as local:  # matplotlib writes local files only
        plot_path = os.path.join(local, TRIALS_PLOT)
        plot_trials(rows, plot_path)
        tf.io.gfile.copy(plot_path, os.path.join(directory, TRIALS_PLOT), overwrite=True)


def make_tuner(
    config,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    *,
    tuner: str = "random",
    max_trials: int = 8,
    tune_lambda: bool = False,
    trial_epochs: int | None = None,
    directory: str | os.PathLike,
    results_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> ShiftAccuracyTuner:
    """The tuner searching LADE's alpha (and lambda) for a TrainConfig and examples.

    Args:
        config: TrainConfig of the trials (the loss is forced to "lade").
        train_files, eval_files: train and val split file patterns.
        tuner: "random", "bayesian" or "hyperband".
        max_trials: trial count (random, bayesian).
        tune_lambda: also search remine_lambda.
        trial_epochs: epochs per trial (Hyperband's maximum), default config.epochs.
        directory: KerasTuner's working directory (trial state, checkpoints, logs).
        results_dir: where trials.json / trials.md / trials.png go (default: the project
            directory).
        overwrite: start afresh instead of resuming a search found in directory.
    """
    if trial_epochs is not None:
        config = dataclasses.replace(config, epochs=int(trial_epochs))
    oracle = make_oracle(tuner, max_trials, config.epochs, search_space(tune_lambda), config.seed)
    return ShiftAccuracyTuner(
        oracle,
        config=config,
        train_files=train_files,
        eval_files=eval_files,
        results_dir=results_dir,
        directory=os.fspath(directory),
        project_name="lade_alpha",
        overwrite=overwrite,
    )


def tuner_options(custom_config: Mapping[str, Any]) -> dict[str, Any]:
    """The tuner options of a Tuner custom_config: nested under "tuner" or at the top level.

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
    options = {**custom, **options}
    unknown = sorted(set(options) - set(TUNER_OPTIONS))
    if unknown:
        raise ValueError(f"unknown Tuner option(s) {unknown}: expected {list(TUNER_OPTIONS)}")
    return options


def tuner_fn(fn_args: "FnArgs") -> "TunerFnResult":
    """TFX Tuner entry point: the shift-accuracy tuner over LADE's alpha.

    Args:
        fn_args: TFX FnArgs. Used: train_files, eval_files (the val split), working_dir and
            custom_config {"train_config": TrainConfig dict, "tuner": {"tuner", "max_trials",
            "tune_lambda", "trial_epochs", "results_dir"}} (options optional).

    Returns:
        TunerFnResult(tuner, fit_kwargs={}); the tuner holds its data.
    """
    from tfx.components.tuner.component import TunerFnResult

    from lade_tf.training import TrainConfig

    options = tuner_options(fn_args.custom_config)
    config = TrainConfig.from_dict(fn_args.custom_config["train_config"])
    tuner = make_tuner(
        config,
        fn_args.train_files,
        fn_args.eval_files,
        directory=fn_args.working_dir,
        **{k: v for k, v in options.items() if v is not None},
    )
    return TunerFnResult(tuner=tuner, fit_kwargs={})


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`python -m pipeline.tuner`: tune alpha on a prepared examples directory; prints the table."""
    from pipeline.flags import (
        add_training_flags,
        add_tuner_flags,
        parse_args,
        training_config_from_args,
    )

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tuner",
        description="Search LADE's alpha (and lambda) with KerasTuner; each trial is scored by "
        "the mean accuracy over the 11 label-shifted versions of the val split.",
    )
    parser.add_argument(
        "--examples-dir",
        type=Path,
        required=True,
        help="directory with Split-train/, Split-val/ and class_info.json "
        "(python -m pipeline.prepare output)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("lade_output") / "tuning",
        help="KerasTuner state, trials.json, trials.md and trials.png go here",
    )
    add_training_flags(parser)
    add_tuner_flags(parser)
    args = parse_args(parser, argv)
    config = training_config_from_args(args, "lade")
    examples = os.fspath(args.examples_dir)
    output = os.fspath(args.output_dir)
    tuner = make_tuner(
        config,
        [os.path.join(examples, "Split-train", "*")],
        [os.path.join(examples, "Split-val", "*")],
        tuner=args.tuner,
        max_trials=args.max_trials,
        tune_lambda=args.tune_lambda,
        trial_epochs=args.trial_epochs,
        directory=output,
        results_dir=output,
        overwrite=True,
    )
    tuner.search()
    rows = trial_table(tuner)
    print(trial_table_markdown(rows))
    best = tuner.get_best_hyperparameters()[0].values
    print(
        f"best alpha: {best['alpha']:.4g}"
        + (f", best lambda: {best['remine_lambda']:.4g}" if "remine_lambda" in best else "")
    )
    print(
        "trial table: " + ", ".join(os.path.join(output, name) for name in TRIAL_FILES),
        file=sys.stderr,
    )
    return rows


if __name__ == "__main__":
    main()
