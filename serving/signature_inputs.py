"""What a signature's inputs accept, and the checks of request tensors against them.

Transport-neutral: the REST front end decodes JSON and the gRPC one TensorProtos into NumPy arrays,
and both are checked here, against the specs read from the SavedModel (`TensorSpec`), before a
signature runs: names, dtypes and shapes, the number of rows a request may carry, and the values
of a target prior. Messages follow TF Serving's where it has one (`DataTypeString` names, the
session's "Expects arg[i] to be float but double is provided", the batcher's "Task size").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from serving.errors import invalid_argument

#: The signature a request that names none runs.
DEFAULT_SIGNATURE = "serving_default"
# Inputs holding a target prior, in the exported models' contract (lade_tf/export.py): one row of
# class weights per example. Their graph refuses a NaN, negative or all-zero row too, but with
# TensorFlow's "Graph execution error ... CheckNumerics" message and no value; checked here first,
# the answer names the input, the value and where it is.
PRIOR_INPUTS = frozenset({"target_prior"})
_PRIOR_EXPECTED = "expected finite, non-negative class weights with a positive sum in every row"
#: TensorFlow dtype name -> the name TF Serving's messages use (DataTypeString).
_DTYPE_STRINGS = {
    "float32": "float",
    "float64": "double",
    "float16": "half",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "string": "string",
}


@dataclass(frozen=True)
class TensorSpec:
    """What a signature input expects: a TensorFlow dtype name and a shape (None = any size)."""

    dtype: str
    shape: tuple[int | None, ...] | None

    def shape_text(self) -> str:
        """The shape as TF Serving writes it, -1 for any size ("[-1,8,8,1]"; "[?]": any rank)."""
        if self.shape is None:
            return "[?]"
        return "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"


def dtype_string(dtype: str) -> str:
    """TensorFlow's name for a dtype in messages (DataTypeString: float32 -> "float")."""
    return _DTYPE_STRINGS.get(dtype, dtype)


def shape_text(shape: Sequence[int]) -> str:
    """A tensor's shape as TF Serving writes it ("[1,8,8,1]")."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_shape(name: str, tensor: np.ndarray, spec: TensorSpec) -> None:
    """INVALID_ARGUMENT unless `tensor`'s shape fits the signature input `spec`."""
    if spec.shape is None:
        return
    shape = tensor.shape
    if len(shape) != len(spec.shape) or any(
        want is not None and want != got for want, got in zip(spec.shape, shape)
    ):
        raise invalid_argument(
            f"input tensor '{name}' has shape {shape_text(shape)}, but the signature expects "
            f"{spec.shape_text()} (-1: any size)"
        )


def has_batch_axis(spec: TensorSpec) -> bool:
    """Whether an input's axis 0 is a batch of any size (its rows), as the signature says."""
    return spec.shape is None or (len(spec.shape) > 0 and spec.shape[0] is None)


def check_batch_size(rows: int, limit: int, source: str) -> None:
    """INVALID_ARGUMENT when a request carries more than `limit` rows (images) in `source`
    (e.g. "input 'images'"), with the batcher's code for a task over its maximum size."""
    if rows > limit:
        raise invalid_argument(
            f"Request batch size {rows} ({source}) is larger than the maximum of {limit} rows per "
            "request (--max-request-batch-size); send the rows in several requests"
        )


def _value_text(value: float) -> str:
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return str(value)


def check_prior(name: str, tensor: np.ndarray) -> None:
    """INVALID_ARGUMENT naming the input, the value and its index unless every row of the target
    prior `tensor` [batch, C] holds finite, non-negative weights with a positive sum."""
    values = np.asarray(tensor, dtype=np.float64)
    if values.ndim == 0:
        return
    for problem, bad in (
        ("NaN or infinite entries", ~np.isfinite(values)),
        ("negative entries", values < 0),
    ):
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise invalid_argument(
                f"input tensor '{name}' has {problem}: {_value_text(tensor[index])} at "
                f"{shape_text(index)}; {_PRIOR_EXPECTED}"
            )
    sums = values.sum(axis=-1)
    if np.any(sums <= 0):
        row = tuple(int(i) for i in np.argwhere(sums <= 0)[0])
        where = f" in row {','.join(str(i) for i in row)}" if row else ""
        raise invalid_argument(f"input tensor '{name}' sums to 0{where}; {_PRIOR_EXPECTED}")


def check_inputs(
    specs: Mapping[str, TensorSpec],
    tensors: Mapping[str, np.ndarray],
    max_batch_size: int | None = None,
) -> None:
    """INVALID_ARGUMENT unless `tensors` are exactly the signature inputs `specs`, with their
    dtypes and shapes (TF Serving's messages where it has one: VerifyRequestInputsSize, the
    session's "Expects arg[i] to be float but double is provided"), at most `max_batch_size`
    rows (None: any number), and valid target priors in PRIOR_INPUTS."""
    expected = sorted(specs)
    sent = sorted(tensors)
    if sent != expected:
        extra = sorted(set(sent) - set(expected))
        missing = sorted(set(expected) - set(sent))
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )
    for index, name in enumerate(expected):
        spec, tensor = specs[name], tensors[name]
        got = "string" if tensor.dtype.kind in "OSU" else tensor.dtype.name
        if got != spec.dtype:
            raise invalid_argument(
                f"Expects arg[{index}] ('{name}') to be {dtype_string(spec.dtype)} but "
                f"{dtype_string(got)} is provided"
            )
        check_shape(name, tensor, spec)
        if max_batch_size is not None and tensor.ndim > 0 and has_batch_axis(spec):
            check_batch_size(tensor.shape[0], max_batch_size, f"input '{name}'")
        if name in PRIOR_INPUTS:
            check_prior(name, tensor)
