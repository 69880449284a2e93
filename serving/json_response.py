"""Tensors -> JSON for the REST API: predict responses and error bodies, as TF Serving writes them.

Mirrors the writing half of tensorflow_serving/util/json_tensor.cc (MakeJsonFromTensors): a row
request is answered with `predictions` (a list; a list of objects when there are several outputs),
a columnar one with `outputs` (a value, or an object of output name -> tensor). Floats are written
with the shortest text that reads back as the same float32/float64, NaN/Infinity as bare tokens,
outputs whose name ends in `_bytes` as `{"b64": ...}`.
"""

from __future__ import annotations

import base64
import json
from typing import Mapping

import numpy as np

from serving.errors import MAX_ERROR_BYTES, cut_to_bytes, invalid_argument
from serving.json_request import COLUMNAR


def _leaf_texts(name: str, tensor: np.ndarray) -> np.ndarray:
    """Every element of `tensor` as its JSON text, same shape."""
    kind = tensor.dtype.kind
    if kind == "f":
        texts = tensor.astype(str)  # shortest text that reads back as the same float32/float64
        if not np.all(np.isfinite(tensor)):
            texts = np.where(np.isnan(tensor), "NaN", texts)
            texts = np.where(np.isposinf(tensor), "Infinity", texts)
            texts = np.where(np.isneginf(tensor), "-Infinity", texts)
        return texts
    if kind in "iu":
        return tensor.astype(str)
    if kind == "b":
        return np.where(tensor, "true", "false")
    as_bytes = name.endswith("_bytes")
    texts = np.empty(tensor.shape, dtype=object)
    flat = texts.reshape(-1)
    for index, value in enumerate(tensor.reshape(-1)):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if as_bytes:
            flat[index] = '{"b64": "' + base64.b64encode(value).decode("ascii") + '"}'
        else:
            flat[index] = json.dumps(value.decode("utf-8", errors="replace"), ensure_ascii=False)
    return texts


def _nested(texts) -> str:
    if not isinstance(texts, np.ndarray):
        return str(texts)
    if texts.ndim == 0:
        return str(texts[()])
    if texts.ndim == 1:
        return "[" + ", ".join(texts.tolist()) + "]"
    return "[" + ", ".join(_nested(part) for part in texts) + "]"


def predict_response(outputs: Mapping[str, np.ndarray], request_format: str) -> bytes:
    """The JSON body answering a predict request (MakeJsonFromTensors).

    Raises:
        ServingError: INVALID_ARGUMENT when row format is impossible (a scalar output, or
            outputs with different batch sizes), as in TF Serving.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    texts = {name: _leaf_texts(name, np.asarray(outputs[name])) for name in names}
    if request_format == COLUMNAR:
        if len(names) == 1:
            body = _nested(texts[names[0]])
        else:
            body = "{" + ", ".join(f"{json.dumps(n)}: {_nested(texts[n])}" for n in names) + "}"
        return ('{"outputs": ' + body + "}").encode("utf-8")
    batch = None
    for name in names:
        if texts[name].ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        size = texts[name].shape[0]
        if batch is not None and size != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    if len(names) == 1:
        rows = [_nested(row) for row in texts[names[0]]]
    else:
        keys = [json.dumps(name) for name in names]
        rows = [
            "{"
            + ", ".join(f"{key}: {_nested(texts[name][i])}" for key, name in zip(keys, names))
            + "}"
            for i in range(batch)
        ]
    return ('{"predictions": [' + ", ".join(rows) + "]}").encode("utf-8")


def error_body(message: str) -> bytes:
    """`{"error": "<message>"}`, the body of every failed REST call (at most MAX_ERROR_BYTES)."""
    return json.dumps({"error": cut_to_bytes(message, MAX_ERROR_BYTES)}).encode("utf-8")
