"""The input checks both front ends share (serving.signature_inputs.check_inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import ServingError
from serving.signature_inputs import TensorSpec, check_inputs

SPECS = {
    "images": TensorSpec("float32", (None, 2, 2)),
    "target_prior": TensorSpec("float32", (None, 3)),
}
GOOD = {"images": np.zeros((1, 2, 2), np.float32), "target_prior": np.ones((1, 3), np.float32)}


@pytest.mark.parametrize(
    "tensors, message",
    [
        (
            {**GOOD, "target_prior": np.ones((1, 2), np.float32)},
            "input tensor 'target_prior' has shape [1,2], but the signature expects [-1,3] "
            "(-1: any size)",
        ),
        (
            {"images": GOOD["images"]},
            "input size does not match signature: 1!=2 len({images}) != "
            "len({images,target_prior}). Sent extra: {}. Missing but required: {target_prior}.",
        ),
        (
            {**GOOD, "images": GOOD["images"].astype(np.int64)},
            "Expects arg[0] ('images') to be float but int64 is provided",
        ),
        (
            {**GOOD, "target_prior": np.array([[b"a", b"b", b"c"]], dtype=object)},
            "Expects arg[1] ('target_prior') to be float but string is provided",
        ),
    ],
)
def test_inputs_not_matching_the_signature_are_invalid_arguments(tensors, message):
    with pytest.raises(ServingError) as caught:
        check_inputs(SPECS, tensors)
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.message == message


def test_matching_inputs_pass():
    check_inputs(SPECS, GOOD)
    check_inputs(SPECS, {k: np.repeat(v, 5, axis=0) for k, v in GOOD.items()})


@pytest.mark.parametrize(
    "prior, message",
    [
        (
            [[0.5, float("nan"), 0.5]],
            "input tensor 'target_prior' has NaN or infinite entries: NaN at [0,1]; expected "
            "finite, non-negative class weights with a positive sum in every row",
        ),
        (
            [[0.5, 0.5, 0.5], [0.2, -0.25, 1]],
            "input tensor 'target_prior' has negative entries: -0.25 at [1,1]; expected finite, "
            "non-negative class weights with a positive sum in every row",
        ),
        (
            [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]],
            "input tensor 'target_prior' sums to 0 in row 1; expected finite, non-negative class "
            "weights with a positive sum in every row",
        ),
        ([[0.5, float("inf"), 0.5]], "has NaN or infinite entries: Infinity at [0,1]"),
    ],
)
def test_a_bad_prior_is_refused_naming_the_input_the_value_and_where(prior, message):
    tensors = {**GOOD, "images": np.zeros((len(prior), 2, 2), np.float32)}
    with pytest.raises(ServingError) as caught:
        check_inputs(SPECS, {**tensors, "target_prior": np.float32(prior)})
    assert caught.value.code == "INVALID_ARGUMENT" and message in caught.value.message


def test_rows_beyond_the_batch_size_limit_are_refused_naming_it():
    rows = {k: np.repeat(v, 5, axis=0) for k, v in GOOD.items()}
    check_inputs(SPECS, rows, max_batch_size=5)
    with pytest.raises(ServingError) as caught:
        check_inputs(SPECS, rows, max_batch_size=4)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == (
        "Request batch size 5 (input 'images') is larger than the maximum of 4 rows per request "
        "(--max-request-batch-size); send the rows in several requests"
    )
    fixed = {"x": TensorSpec("float32", (3,))}  # axis 0 of a fixed size is not a batch
    check_inputs(fixed, {"x": np.zeros(3, np.float32)}, max_batch_size=2)
