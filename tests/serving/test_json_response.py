"""serving.json_response: predict responses and error bodies as TF Serving writes them (no
TensorFlow needed).

Expected strings are the ones tensorflow_serving/util/json_tensor.cc produces and its tests check.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from serving.errors import ServingError
from serving.json_request import COLUMNAR, ROW
from serving.json_response import predict_response


def test_row_response_single_and_several_outputs():
    single = json.loads(predict_response({"y": np.float32([[0.2, 1.0], [3.5, 4]])}, ROW))
    assert single == {"predictions": [[0.2, 1.0], [3.5, 4.0]]}
    several = json.loads(
        predict_response(
            {"class_ids": np.int64([3, 1]), "probabilities": np.float32([[0.25, 0.75], [1, 0]])},
            ROW,
        )
    )
    assert several == {
        "predictions": [
            {"class_ids": 3, "probabilities": [0.25, 0.75]},
            {"class_ids": 1, "probabilities": [1.0, 0.0]},
        ]
    }


def test_columnar_response_single_and_several_outputs():
    assert json.loads(predict_response({"y": np.float32([3.5, 4.0])}, COLUMNAR)) == {
        "outputs": [3.5, 4.0]
    }
    assert json.loads(
        predict_response({"a": np.int64([1, 2]), "b": np.float32(0.5)}, COLUMNAR)
    ) == {"outputs": {"a": [1, 2], "b": 0.5}}


def test_floats_read_back_exactly_and_special_values_are_tokens():
    values = np.float32([0.1, 1 / 3, 1e-45, 3.4e38, 16777216, -0.0, np.nan, np.inf, -np.inf])
    text = predict_response({"y": values}, COLUMNAR).decode()
    assert "NaN, Infinity, -Infinity" in text and "0.1," in text and "16777216.0" in text
    decoded = np.float32(json.loads(text)["outputs"])
    np.testing.assert_array_equal(decoded, values)


def test_bytes_outputs_are_b64_and_strings_are_text():
    body = json.loads(
        predict_response(
            {"image_bytes": np.array([b"\x00\xff"], object), "names": np.array([b"zero"], object)},
            COLUMNAR,
        )
    )
    assert body["outputs"]["image_bytes"] == [{"b64": base64.b64encode(b"\x00\xff").decode()}]
    assert body["outputs"]["names"] == ["zero"]


def test_row_response_needs_a_common_batch_size():
    with pytest.raises(ServingError, match="inconsistent batch size"):
        predict_response({"a": np.zeros(2), "b": np.zeros(3)}, ROW)
    with pytest.raises(ServingError, match="has no shape information"):
        predict_response({"a": np.float32(1.0)}, ROW)
