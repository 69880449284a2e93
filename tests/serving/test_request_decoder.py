"""serving.request_decoder: a large body decoded in the decoding process gives what decoding in
the server process gives, its errors included (they cross the process boundary whole)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from serving.errors import ServingError
from serving.inference import InferenceCore
from serving.json_request import decode_predict_request
from serving.request_decoder import INLINE_DECODE_MAX_BYTES, RequestDecoder
from serving.signature_inputs import TensorSpec

pytestmark = pytest.mark.timeout(120)

SIGNATURES = {"serving_default": {"x": TensorSpec("float32", (None, 4))}}
ROWS = INLINE_DECODE_MAX_BYTES // 16  # over the inline size once written as JSON
NOT_FOUND = ServingError("NOT_FOUND", "Servable not found for request: Latest(m)")


def in_server(body: bytes, signatures, limit: int):
    """(values, format) or (code, message) of decoding in this process."""
    try:
        request = decode_predict_request(body, signatures, limit)
    except ServingError as error:
        return error.code, error.message
    return request.tensors["x"].tolist(), request.request_format


async def in_decoder(cases: list) -> list:
    """The same for each case, through a RequestDecoder and its decoding process."""
    decoder = RequestDecoder(InferenceCore(None, 2, 60.0), max_batch_size=ROWS)
    await decoder.start()
    results = []
    try:
        for body, signatures, limit in cases:
            decoder.max_batch_size = limit
            try:
                request = await decoder.decode(body, signatures)
            except ServingError as error:
                results.append((error.code, error.message))
            else:
                results.append((request.tensors["x"].tolist(), request.request_format))
    finally:
        decoder.stop()
    return results


def test_large_bodies_decode_in_the_decoding_process_as_in_the_server():
    values = np.random.default_rng(0).random((ROWS, 4)).round(6)
    body = json.dumps({"inputs": {"x": values.tolist()}}).encode()
    assert len(body) > INLINE_DECODE_MAX_BYTES
    cases = [
        (body, SIGNATURES, ROWS),
        (body, NOT_FOUND, ROWS),
        (body, SIGNATURES, ROWS - 1),
        (body[:-2], SIGNATURES, ROWS),
    ]
    expected = [in_server(*case) for case in cases]
    assert asyncio.run(in_decoder(cases)) == expected
    assert expected[0] == (values.astype(np.float32).tolist(), "columnar")
    assert [code for code, _ in expected[1:]] == [
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
    ]
