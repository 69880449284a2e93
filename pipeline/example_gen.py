"""LongTailExampleGen: the TFX component that prepares long-tailed train / balanced val / test.

Its executor runs the Beam graph of `pipeline.prepare` (`WriteLongTailExamples`) in the Beam
pipeline TFX builds from the pipeline's `beam_pipeline_args` (see `pipeline.beam_args`), and
writes `Split-train/`, `Split-val/`, `Split-test/` and `class_info.json` into the `examples`
artifact (payload: tf.Example; `image` PNG/JPEG bytes, `label` int64). The class names and per-split
counts are also set as custom properties of the artifact (JSON strings).

    example_gen = LongTailExampleGen(source="folder:/data/cifar10", imbalance_ratio=100.0)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
"""

# No `from __future__ import annotations`: the TFX decorator reads the annotations as types.
import json

import apache_beam as beam
from tfx import v1 as tfx
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts

from lade_tf.records import SPLITS
from pipeline.prepare import prepare_examples
from pipeline.split_plan import PrepareConfig, parse_image_size

_Parameter = tfx.dsl.components.Parameter
_DEFAULTS = PrepareConfig()


@tfx.dsl.components.component(use_beam=True)
def LongTailExampleGen(  # pylint: disable=invalid-name  (TFX component names are classes)
    examples: tfx.dsl.components.OutputArtifact[standard_artifacts.Examples],
    source: _Parameter[str] = "fashion_mnist",
    imbalance_ratio: _Parameter[float] = _DEFAULTS.imbalance_ratio,
    n_max: _Parameter[int] = _DEFAULTS.n_max,
    profile: _Parameter[str] = _DEFAULTS.profile,
    val_per_class: _Parameter[int] = _DEFAULTS.val_per_class,
    seed: _Parameter[int] = _DEFAULTS.seed,
    class_order: _Parameter[str] = _DEFAULTS.class_order,
    test_fraction: _Parameter[float] = _DEFAULTS.test_fraction,
    image_size: _Parameter[str] = None,
    tfds_data_dir: _Parameter[str] = None,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Long-tailed train, balanced val and the official test split of an image source.

    Args:
        examples: output Examples artifact with splits train, val, test.
        source: fashion_mnist, tfds:NAME, folder:PATH or idx:DIR (see `pipeline.sources`).
        imbalance_ratio, n_max, profile, val_per_class, seed, class_order, test_fraction: as in
            `pipeline.split_plan.PrepareConfig` (n_max None: the most every class can supply).
        image_size: "HxW" to resize every image; None requires one common size.
        tfds_data_dir: TFDS data directory for tfds: sources.
        beam_pipeline: provided by TFX.
    """
    config = PrepareConfig(
        imbalance_ratio=imbalance_ratio,
        n_max=n_max,
        profile=profile,
        val_per_class=val_per_class,
        seed=seed,
        class_order=class_order,
        test_fraction=test_fraction,
        image_size=parse_image_size(image_size),
    )
    info = prepare_examples(
        source,
        examples.uri,
        config,
        pipeline=beam_pipeline,
        overwrite=True,
        tfds_data_dir=tfds_data_dir,
    )
    examples.splits = list(SPLITS)
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples.set_string_custom_property("class_names", json.dumps(info["class_names"]))
    examples.set_string_custom_property("counts", json.dumps(info["counts"]))
