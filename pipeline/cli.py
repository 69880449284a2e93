"""The standalone command lines of the pipeline's steps, outside TFX, in one place:

    python -m pipeline.prepare --output-dir DIR [data flags] [Beam flags] [--overwrite]
    python -m pipeline.trainer --examples-dir DIR --output-dir OUT [--loss L] [training flags]
    python -m pipeline.tuner --examples-dir DIR [--tuner random --max-trials N] [training flags]

The module files (`pipeline.prepare`, `pipeline.trainer`, `pipeline.tuner`) hold only the work,
as TFX's module files do, and hand `python -m` to the functions here. The flags are
`pipeline.flags`'s, the same as `pipeline/run.py`'s. `python -m pipeline.trainer` is also how
multi-worker training runs: the same command on every worker with its TF_CONFIG and `--strategy
multi_worker`; the chief writes the outputs. Bad input: one `error: ...` line, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

from lade_tf.process_settings import configure_tensorflow
from lade_tf.train_config import LOSS_NAMES
from pipeline import flags


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error: ...` line, like the commands' other input errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_prepare_parser() -> argparse.ArgumentParser:
    """`python -m pipeline.prepare`: --output-dir, --overwrite, and the data and Beam flags of
    run.py. Unknown flags are passed to Beam as well."""
    parser = _ArgumentParser(
        prog="python -m pipeline.prepare",
        description="Long-tailed train / balanced val / official test splits as gzip TFRecords. "
        "Flags this parser does not know are passed to Beam.",
    )
    parser.add_argument("--output-dir", required=True, help="the examples directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    flags.add_data_flags(parser)
    flags.add_beam_flags(parser)
    return parser


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.prepare`; returns the exit status (2 for bad input)."""
    from lade_tf.records import SPLITS
    from pipeline import beam_args
    from pipeline.prepare import check_output_dir, prepare_examples
    from pipeline.sources import resolve_source

    parser = build_prepare_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    log = logging.getLogger("pipeline.prepare")
    start = time.perf_counter()
    try:
        config = flags.prepare_config_from_args(args)
        check_output_dir(os.path.abspath(args.output_dir), args.overwrite)
        source = resolve_source(args.source, tfds_data_dir=args.tfds_data_dir)
        with beam_args.runner_args_from_flags(args, source.num_images, extra) as pipeline_args:
            log.info(
                "source %s: %d images listed, %d classes; Beam args: %s",
                source.spec,
                source.num_images,
                len(source.class_names),
                " ".join(pipeline_args),
            )
            info = prepare_examples(
                source,
                args.output_dir,
                config,
                pipeline_args=pipeline_args,
                overwrite=args.overwrite,
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    totals = {split: sum(info["counts"][split]) for split in SPLITS}
    print(
        f"wrote {totals['train']} train / {totals['val']} val / {totals['test']} test examples "
        f"({info['height']}x{info['width']}x{info['channels']}, n_max {info['n_max']}, "
        f"{info['num_skipped']} skipped) to {os.path.abspath(args.output_dir)} in "
        f"{seconds:.1f} s ({source.num_images / seconds:.0f} source images/s)"
    )
    return 0


def _examples_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--examples-dir",
        type=Path,
        required=True,
        help="directory with Split-train/, Split-val/ and class_info.json "
        "(python -m pipeline.prepare output)",
    )


def _split_files(examples_dir: Path, split: str) -> list[str]:
    return [os.path.join(os.fspath(examples_dir), f"Split-{split}", "*")]


def build_trainer_parser() -> argparse.ArgumentParser:
    """`python -m pipeline.trainer`: the examples, the output, --loss and the training flags."""
    parser = _ArgumentParser(
        prog="python -m pipeline.trainer",
        description="Train one loss on an examples directory (pipeline.prepare output) outside "
        "TFX; with --strategy multi_worker, run it on every worker with TF_CONFIG.",
    )
    _examples_dir_flag(parser)
    parser.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="serving_model/, model_run/ and checkpoints/ are written here",
    )
    parser.add_argument("--loss", choices=LOSS_NAMES, default="lade")
    flags.add_training_flags(parser)
    return parser


def trainer_main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.trainer`: train one loss on a prepared examples directory."""
    args = flags.parse_args(build_trainer_parser(), argv)
    config = flags.training_config_from_args(args, args.loss)
    configure_tensorflow()
    # Before anything else touches TensorFlow: collective ops are configured at start-up.
    from lade_tf.tf_training import make_strategy
    from pipeline.trainer import train_and_save

    strategy = make_strategy(config.strategy)
    output = os.fspath(args.output_dir)
    train_and_save(
        config,
        _split_files(args.examples_dir, "train"),
        _split_files(args.examples_dir, "val"),
        serving_model_dir=os.path.join(output, "serving_model"),
        model_run_dir=os.path.join(output, "model_run"),
        checkpoint_dir=os.path.join(output, "checkpoints"),
        strategy=strategy,
    )
    print(f"model: {os.path.join(output, 'serving_model')}", file=sys.stderr)
    return 0


def build_tuner_parser() -> argparse.ArgumentParser:
    """`python -m pipeline.tuner`: the examples, the output, the training and tuner flags."""
    parser = _ArgumentParser(
        prog="python -m pipeline.tuner",
        description="Search LADE's alpha (and lambda) with KerasTuner; each trial is scored by "
        "the mean accuracy over the 11 label-shifted versions of the val split.",
    )
    _examples_dir_flag(parser)
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("lade_output") / "tuning",
        help="KerasTuner state, trials.json, trials.md and trials.png go here",
    )
    flags.add_training_flags(parser)
    flags.add_tuner_flags(parser)
    return parser


def tuner_main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.tuner`: tune alpha on a prepared examples directory; prints the
    trial table and the best alpha."""
    args = flags.parse_args(build_tuner_parser(), argv)
    config = flags.training_config_from_args(args, "lade")
    output = os.fspath(args.output_dir)
    tuning = flags.tuning_config_from_args(args, results_dir=output)
    configure_tensorflow()
    from pipeline.trial_report import TRIAL_FILES, trial_table, trial_table_markdown
    from pipeline.tuner import make_tuner

    tuner = make_tuner(
        config,
        _split_files(args.examples_dir, "train"),
        _split_files(args.examples_dir, "val"),
        tuning,
        directory=output,
        overwrite=True,
    )
    tuner.search()
    print(trial_table_markdown(trial_table(tuner)))
    best = tuner.get_best_hyperparameters()[0].values
    print(
        f"best alpha: {best['alpha']:.4g}"
        + (f", best lambda: {best['remine_lambda']:.4g}" if "remine_lambda" in best else "")
    )
    print(
        "trial table: " + ", ".join(os.path.join(output, name) for name in TRIAL_FILES),
        file=sys.stderr,
    )
    return 0
