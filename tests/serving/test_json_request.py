"""serving.json_request: TF Serving's REST JSON request formats and error messages (no TensorFlow
needed).

Expected strings are the ones tensorflow_serving/util/json_tensor.cc produces and its tests check.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from serving.errors import ServingError
from serving.json_request import (
    COLUMNAR,
    ROW,
    decode_predict_request,
    parse_json,
    predict_inputs,
    signature_name_of,
)
from serving.signature_inputs import TensorSpec
from tests.conftest import import_or_skip

TWO_INPUTS = {
    "images": TensorSpec("float32", (None, 2, 2)),
    "target_prior": TensorSpec("float32", (None, 3)),
}
ONE_INPUT = {"x": TensorSpec("float32", (None,))}
BYTES_INPUT = {"image_bytes": TensorSpec("string", (None,))}


def parse(payload, specs):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return predict_inputs(parse_json(body), body, specs)


def error_of(payload, specs=TWO_INPUTS) -> ServingError:
    with pytest.raises(ServingError) as caught:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        document = parse_json(body)
        signature_name_of(document)
        predict_inputs(document, body, specs)
    return caught.value


IMAGE = [[1, 2], [3, 4.5]]


def test_row_format_with_named_inputs_batches_on_axis_0():
    tensors, request_format = parse(
        {
            "instances": [
                {"images": IMAGE, "target_prior": [1, 0, 0]},
                {"images": IMAGE, "target_prior": [0, 1, 0]},
            ]
        },
        TWO_INPUTS,
    )
    assert request_format == ROW
    assert tensors["images"].dtype == np.float32 and tensors["images"].shape == (2, 2, 2)
    np.testing.assert_array_equal(tensors["target_prior"], [[1, 0, 0], [0, 1, 0]])


def test_row_format_plain_list_for_a_single_input():
    tensors, request_format = parse({"instances": [1.0, 2, 5.5]}, ONE_INPUT)
    assert request_format == ROW
    np.testing.assert_array_equal(tensors["x"], np.float32([1.0, 2.0, 5.5]))


def test_columnar_format_and_b64_strings():
    tensors, request_format = parse(
        {"inputs": {"images": [IMAGE], "target_prior": [[1, 2, 3]], "ignored_extra_key": 1}},
        TWO_INPUTS,
    )
    assert request_format == COLUMNAR and tensors["images"].shape == (1, 2, 2)
    payload = {"inputs": [{"b64": base64.b64encode(b"\x89PNG\x00").decode()}, "plain"]}
    tensors, _ = parse(payload, BYTES_INPUT)
    assert tensors["image_bytes"].tolist() == [b"\x89PNG\x00", b"plain"]
    # A lone b64 object is the (only) input's value, not an object of named inputs.
    tensors, _ = parse({"instances": [{"b64": "YWJj"}]}, BYTES_INPUT)
    assert tensors["image_bytes"].tolist() == [b"abc"]


def test_nan_and_infinity_tokens_are_accepted():
    tensors, _ = parse(b'{"instances": [NaN, Infinity, -Infinity]}', ONE_INPUT)
    assert np.isnan(tensors["x"][0]) and tensors["x"][1] == np.inf and tensors["x"][2] == -np.inf


@pytest.mark.parametrize(
    "payload, specs, code, message",
    [
        (b"", TWO_INPUTS, "INVALID_ARGUMENT", "JSON Parse error: The document is empty"),
        (b"instances = [1, 2]", TWO_INPUTS, "INVALID_ARGUMENT", "JSON Parse error: "),
        (b"[1, 2]", TWO_INPUTS, "INVALID_ARGUMENT", "Is not object"),
        (
            {"signature_name": 100},
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "'signature_name' key must be a string value.",
        ),
        ({"foo": 1}, TWO_INPUTS, "INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key"),
        (
            {
                "instances": [],
            },
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "No values in 'instances' array",
        ),
        (
            {"instances": {"x": 1}},
            ONE_INPUT,
            "INVALID_ARGUMENT",
            "Excepting 'instances' to be an list/array",
        ),
        (
            {"instances": [1], "inputs": [1]},
            ONE_INPUT,
            "INVALID_ARGUMENT",
            "expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        ({"instances": ["x", "y"]}, ONE_INPUT, "INVALID_ARGUMENT", "not of expected type: float"),
        (
            {"instances": [True]},
            ONE_INPUT,
            "INVALID_ARGUMENT",
            "Type: True is not of expected type",
        ),
        (
            {"instances": [IMAGE]},
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "instances is a plain list, but expecting list of objects",
        ),
        (
            {"instances": [{"images": IMAGE}]},
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "keys must be equal to: images,target_prior",
        ),
        (
            {"instances": [{"images": IMAGE, "target_prior": [1, 1, 1], "x": 1}]},
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "does not have named input: x",
        ),
        (
            {
                "instances": [
                    {"images": IMAGE, "target_prior": [1, 1, 1]},
                    {"images": [[1, 2]], "target_prior": [1, 1, 1]},
                ]
            },
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "Expecting tensor size: 4 but got: 2",
        ),
        (
            {"instances": [[1, 2], [3]]},
            {"x": TensorSpec("float32", (None, 2))},
            "INVALID_ARGUMENT",
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
            "tensor size: 2 but got: 1",
        ),
        (
            {"inputs": [[1, 2], [3]]},
            {"x": TensorSpec("float32", (None, 2))},
            "INVALID_ARGUMENT",
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        (
            {"inputs": [[1, [2]]]},
            {"x": TensorSpec("float32", (None, 2))},
            "INVALID_ARGUMENT",
            "Encountered list at unexpected level: 2 expected < 2",
        ),
        (
            {"inputs": {"images": [IMAGE]}},
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "Missing named input: target_prior in 'inputs' object.",
        ),
        (
            {"inputs": [IMAGE]},
            TWO_INPUTS,
            "INVALID_ARGUMENT",
            "inputs is a plain value/list, but expecting an object",
        ),
        (
            {"inputs": [{"b64": "not base64!"}]},
            BYTES_INPUT,
            "INVALID_ARGUMENT",
            "Unable to base64 decode",
        ),
        (
            {"inputs": [{"b64": "YWJj", "extra": 1}]},
            BYTES_INPUT,
            "INVALID_ARGUMENT",
            "not formatted correctly for base64 data",
        ),
        ({"inputs": [1]}, BYTES_INPUT, "INVALID_ARGUMENT", "is not of expected type: string"),
    ],
)
def test_bad_requests_get_tf_serving_errors(payload, specs, code, message):
    error = error_of(payload, specs)
    assert error.code == code and error.http_status == 400
    assert message in error.message


def test_fast_and_exact_paths_agree():
    rng = np.random.default_rng(0)
    images = (rng.random((3, 2, 2)) * 255).round(3)
    payload = {"instances": [{"images": im.tolist(), "target_prior": [1, 2, 3]} for im in images]}
    fast, _ = parse(payload, TWO_INPUTS)
    # A `true` anywhere in the body (here in an ignored key) forces the exact element-wise path.
    slow, _ = parse({**payload, "unused": True}, TWO_INPUTS)
    for name in fast:
        np.testing.assert_array_equal(fast[name], slow[name])
        assert fast[name].dtype == slow[name].dtype == np.float32


class CountingParser:
    """Stands in for the orjson module and counts the bodies it parsed."""

    def __init__(self, orjson):
        self._orjson = orjson
        self.JSONDecodeError = orjson.JSONDecodeError
        self.parsed = 0

    def loads(self, body):
        document = self._orjson.loads(body)
        self.parsed += 1
        return document


def test_without_orjson_the_standard_parser_gives_the_same_tensors_and_errors(monkeypatch):
    import serving.json_request as json_request

    orjson = import_or_skip("orjson", "the REST server's fast JSON parser (requirements.txt)")
    assert json_request.orjson is orjson
    # Strict JSON, so orjson itself parses it; numbers where two parsers could disagree.
    body = json.dumps(
        {
            "instances": [
                {
                    "images": [[0.1, 1e-45], [3.4028234663852886e38, -0.0]],
                    "target_prior": [1, 16777215, 2],
                },
                {"images": [[1 / 3, 2.5e-38], [123456.789, 7]], "target_prior": [0.5, 0.25, 0.25]},
            ],
        }
    ).encode()
    counting = CountingParser(orjson)
    monkeypatch.setattr(json_request, "orjson", counting)
    with_orjson, _ = parse(body, TWO_INPUTS)
    assert counting.parsed == 1  # the document came from orjson, not from the fallback
    malformed = [b"{", b'{"instances": [1, 2}', b'{"instances": [1.5] "x"}', b"\xff"]
    errors_with = [error_of(text, ONE_INPUT).message for text in malformed]
    monkeypatch.setattr(json_request, "orjson", None)
    without, _ = parse(body, TWO_INPUTS)
    for name in TWO_INPUTS:
        assert with_orjson[name].dtype == without[name].dtype == np.float32
        np.testing.assert_array_equal(with_orjson[name], without[name])
    assert [error_of(text, ONE_INPUT).message for text in malformed] == errors_with
    assert all(message.startswith("JSON Parse error") for message in errors_with), errors_with


def test_nan_tokens_which_orjson_rejects_are_read_by_the_fallback():
    orjson = import_or_skip("orjson", "the REST server's fast JSON parser (requirements.txt)")
    body = b'{"instances": [1.5, NaN, -Infinity]}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    tensors, _ = parse(body, ONE_INPUT)
    assert tensors["x"][0] == 1.5 and np.isnan(tensors["x"][1]) and tensors["x"][2] == -np.inf


def test_absurdly_nested_json_is_a_bad_request():
    deep = b"[" * 5000 + b"]" * 5000
    assert "nested too deeply" in error_of(b'{"instances": ' + deep + b"}", ONE_INPUT).message
    medium = b"[" * 990 + b"1" + b"]" * 990
    assert error_of(b'{"inputs": ' + medium + b"}", ONE_INPUT).http_status == 400


def both_paths(payload: dict, specs) -> dict[str, np.ndarray]:
    """The tensors of `payload` by the NumPy fast path and by the exact path (a `true` token
    in an ignored key forces it); they must agree, values and dtypes."""
    fast, _ = parse(payload, specs)
    exact, _ = parse({**payload, "unused": True}, specs)
    for name in fast:
        np.testing.assert_array_equal(fast[name], exact[name])
        assert fast[name].dtype == exact[name].dtype
    return fast


@pytest.mark.parametrize("form", ["inputs", "instances"])
def test_numbers_sent_to_a_float_input_are_cast_as_tf_serving_does(form):
    values = [1e39, -1e39, 16777217, 0.1, 2**70, 1]
    for dtype in ("float32", "float64"):
        with np.errstate(over="ignore"):  # float32: +-1e39 become +-inf, as a C++ cast does
            expected = np.array(values, dtype=np.float64).astype(dtype)
        tensors = both_paths({form: values}, {"x": TensorSpec(dtype, (None,))})
        np.testing.assert_array_equal(tensors["x"], expected)
        assert tensors["x"].dtype == np.dtype(dtype)
    assert np.isinf(both_paths({form: [1e39]}, ONE_INPUT)["x"][0])  # float32 overflow: inf


@pytest.mark.parametrize("form", ["inputs", "instances"])
def test_small_int_types_keep_the_low_bits_of_an_int32(form):
    values = [300, -1, 70000, -(2**31), 2**31 - 1]
    for dtype in ("int8", "int16", "uint8"):
        tensors = both_paths({form: values}, {"x": TensorSpec(dtype, (None,))})
        np.testing.assert_array_equal(tensors["x"], np.array(values, np.int64).astype(dtype))
    assert both_paths({form: [300, -1]}, {"x": TensorSpec("uint8", (None,))})["x"].tolist() == [
        44,
        255,
    ]


@pytest.mark.parametrize(
    "dtype, value, message",
    [
        ("int8", 2**31, "JSON Value: 2147483648 Type: Number is not of expected type: int8"),
        ("int32", 2**31, "is not of expected type: int32"),
        ("uint32", -1, "JSON Value: -1 Type: Number is not of expected type: uint32"),
        ("int64", 2**63, "is not of expected type: int64"),
        ("uint8", 1.5, "JSON Value: 1.5 Type: Number is not of expected type: uint8"),
        ("float16", 1.0, "Conversion of JSON Value: 1.0 to type: half"),
    ],
)
def test_integers_out_of_the_json_range_and_half_are_refused(dtype, value, message):
    error = error_of({"inputs": [value]}, {"x": TensorSpec(dtype, (None,))})
    assert message in error.message
    assert error.code == ("UNIMPLEMENTED" if dtype == "float16" else "INVALID_ARGUMENT")


def test_a_quoted_value_is_one_line_of_at_most_256_bytes():
    value = {"a\nb": ["line\n" * 200, "é" * 300]}
    error = error_of({"inputs": [value]}, ONE_INPUT)
    assert error.message.startswith("JSON Value: {") and "\n" not in error.message
    quoted = error.message[len("JSON Value: ") : error.message.index(" Type: Object")]
    assert quoted.endswith("...") and len(quoted.encode()) <= 256 + len("...")
    quoted.encode("utf-8")  # never cut inside a character


@pytest.mark.parametrize(
    "payload, source",
    [
        ({"instances": [[1, 2]] * 3}, "'instances'"),
        ({"inputs": [[1, 2]] * 3}, "input 'x'"),
        ({"inputs": {"x": [[1, 2]] * 3}}, "input 'x'"),
    ],
)
def test_a_request_over_the_batch_size_limit_is_refused_before_its_tensors_are_built(
    payload, source
):
    specs = {"x": TensorSpec("int32", (None, 2))}
    body = json.dumps(payload).encode()
    assert predict_inputs(parse_json(body), body, specs, max_batch_size=3)[0]["x"].shape == (3, 2)
    with pytest.raises(ServingError) as caught:
        predict_inputs(parse_json(body), body, specs, max_batch_size=2)
    assert caught.value.message.startswith(f"Request batch size 3 ({source}) is larger than")
    # Checked before any value is read: a string where a number belongs is not reached.
    bad = json.dumps({"inputs": [["a", "b"]] * 3}).encode()
    with pytest.raises(ServingError, match="batch size 3"):
        predict_inputs(parse_json(bad), bad, specs, max_batch_size=2)


def test_decoding_reports_json_then_version_then_signature_errors_as_tf_serving():
    signatures = {"serving_default": TWO_INPUTS}
    not_found = ServingError("NOT_FOUND", "Servable not found for request: Latest(m)")
    good = json.dumps({"inputs": {"images": [IMAGE], "target_prior": [[1, 2, 3]]}}).encode()
    request = decode_predict_request(good, signatures)
    assert request.signature_name == "serving_default" and request.request_format == COLUMNAR
    assert request.tensors["images"].shape == (1, 2, 2)
    with pytest.raises(ServingError, match="JSON Parse error"):
        decode_predict_request(b"{", not_found)
    with pytest.raises(ServingError, match="Servable not found"):
        decode_predict_request(good, not_found)
    other = json.dumps({"signature_name": "other", "inputs": [1]}).encode()
    with pytest.raises(ServingError, match='Serving signature name: "other" not found'):
        decode_predict_request(other, signatures)
