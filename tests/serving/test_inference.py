"""The input checks both front ends share (serving.inference.check_inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.inference import check_inputs
from serving.json_tensor import TensorSpec
from serving.model_manager import Signature
from serving.status import ServingError

SIGNATURE = Signature(
    "serving_default",
    {
        "images": TensorSpec("float32", (None, 2, 2)),
        "target_prior": TensorSpec("float32", (None, 3)),
    },
    function=None,
)
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
        check_inputs(SIGNATURE, tensors)
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.message == message


def test_matching_inputs_pass():
    check_inputs(SIGNATURE, GOOD)
    check_inputs(SIGNATURE, {k: np.repeat(v, 5, axis=0) for k, v in GOOD.items()})
