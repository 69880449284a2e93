"""`python -m lade_tf.train`: train on any Keras backend from prepared examples, without TensorFlow.

    KERAS_BACKEND=jax python -m lade_tf.train --examples /tmp/cifar10_lt --output-dir /tmp/run \\
        --loss lade --arch resnet32_bbn --epochs 30 --warmup-epochs 5

Every `lade_tf.train_config.TrainConfig` field is a flag (`lade_tf.train_flags`, the same names
as `pipeline/run.py`), except `--strategy` (tf.distribute needs TensorFlow). The work is
`lade_tf.array_training.train_and_evaluate`. Process settings are made in `main`, before Keras
loads: the Keras backend (JAX where TensorFlow is not installed and KERAS_BACKEND is unset) and
TensorFlow's oneDNN switch (`lade_tf.process_settings`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lade_tf.train_config import TrainConfig
from lade_tf.train_flags import add_train_config_flags, train_config_from_flags

#: TrainConfig fields that have no flag here: tf.distribute strategies need TensorFlow.
TENSORFLOW_ONLY_FIELDS = ("strategy",)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the examples, the output and every TrainConfig field as a flag."""
    parser = argparse.ArgumentParser(
        prog="python -m lade_tf.train",
        description="Train on any Keras backend (KERAS_BACKEND) from prepared examples and "
        "evaluate under label shift. Flags are TrainConfig fields (lade_tf/train_config.py).",
    )
    parser.add_argument("--examples", required=True, help="directory from pipeline.prepare")
    parser.add_argument("--output-dir", required=True, help="where the model and reports go")
    parser.add_argument(
        "--eval-seeds", default="0,1,2", help="subsampling seeds of the shift evaluation"
    )
    parser.add_argument("--verbose", default="auto", help="Keras progress: 0, 1, 2 or auto")
    add_train_config_flags(parser, exclude=TENSORFLOW_ONLY_FIELDS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    """(the parsed flags, the checked TrainConfig); bad values exit 2 with the config's message,
    before anything is read or trained."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = train_config_from_flags(args, args.loss)
        args.eval_seeds = [int(s) for s in args.eval_seeds.split(",") if s.strip()]
        if args.verbose != "auto":
            args.verbose = int(args.verbose)
    except ValueError as error:
        parser.error(str(error))
    if not args.eval_seeds:
        parser.error(f"--eval-seeds = {args.eval_seeds!r}: expected comma-separated integers")
    return args, config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m lade_tf.train`; returns the exit status."""
    from lade_tf.process_settings import choose_keras_backend, configure_tensorflow

    args, config = parse_args(argv)
    choose_keras_backend()
    configure_tensorflow()
    from lade_tf.array_training import train_and_evaluate

    try:
        train_and_evaluate(
            args.examples,
            args.output_dir,
            config,
            eval_seeds=args.eval_seeds,
            verbose=args.verbose,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
