"""LongTailExampleGen in a real TFX LocalDagRunner run with StatisticsGen, SchemaGen and
ExampleValidator consuming its output (SQLite MLMD in a temporary directory)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from tests.pipeline.tfx_support import run_local_pipeline


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_long_tail_example_gen_feeds_statistics_schema_and_validator(digits_folder, tmp_path):
    from tfx import v1 as tfx

    from lade_tf.records import read_class_info
    from pipeline.example_gen import LongTailExampleGen

    example_gen = LongTailExampleGen(
        source=f"folder:{digits_folder}", imbalance_ratio=10.0, n_max=100, val_per_class=5, seed=3
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    artifacts = run_local_pipeline(
        "long_tail_example_gen_test",
        [example_gen, statistics_gen, schema_gen, validator],
        tmp_path,
    )
    [examples] = artifacts["Examples"]
    assert json.loads(examples.properties["split_names"].string_value) == ["train", "val", "test"]
    assert json.loads(examples.custom_properties["class_names"].string_value) == [
        f"digit_{d}" for d in range(10)
    ]
    info = read_class_info(examples.uri)
    # DESIGN section 3: n_k = floor(n_max * (1/IR)^(k/(C-1))), 100 ... 10.
    assert (
        info["counts"]["train"]
        == [math.floor(100 * 0.1 ** (k / 9)) for k in range(10)]
        == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    )
    assert info["counts"]["val"] == [5] * 10
    assert sorted(os.listdir(examples.uri)) == [
        "Split-test",
        "Split-train",
        "Split-val",
        "class_info.json",
    ]
    assert not [p for p in os.listdir(os.path.dirname(examples.uri)) if ".tmp-" in p]

    from tensorflow_metadata.proto.v0 import anomalies_pb2

    [anomalies] = artifacts["ExampleAnomalies"]
    [statistics] = artifacts["ExampleStatistics"]
    for split in ("train", "val", "test"):
        anomalies_file = os.path.join(anomalies.uri, f"Split-{split}", "SchemaDiff.pb")
        with open(anomalies_file, "rb") as f:
            report = anomalies_pb2.Anomalies.FromString(f.read())
        assert not report.anomaly_info, f"{split}: {report.anomaly_info}"
        assert os.path.exists(os.path.join(statistics.uri, f"Split-{split}"))
    assert np.sum(info["counts"]["test"]) == len(range(0, 1797, 5))
