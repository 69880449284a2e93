"""JSON request -> tensors for the REST API, with TF Serving's formats and error messages.

Mirrors the reading half of tensorflow_serving/util/json_tensor.cc: a predict request carries
either `instances` (row format, one entry per batch row, objects keyed by input name when the
signature has several inputs) or `inputs` (columnar format: one value, or an object of input name
-> tensor); string inputs may be `{"b64": "..."}`. As in TF Serving 2.18, any number sent to a
float input is cast, and int8 / int16 / uint8 inputs take an int32 and keep its low bits. The
answer is written by `serving.json_response`, in the format the request used (ROW or COLUMNAR).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

try:  # about 3x faster than json for large tensors; strict JSON only, so json reads NaN tokens
    import orjson
except ImportError:  # pragma: no cover - optional
    orjson = None

from serving.errors import SNIPPET_BYTES, ServingError, cut_to_bytes, invalid_argument, snippet
from serving.signature_inputs import (
    DEFAULT_SIGNATURE,
    TensorSpec,
    check_batch_size,
    dtype_string,
    has_batch_axis,
    shape_text,
)

#: Request formats (TF Serving's JsonPredictRequestFormat); the response uses the request's.
ROW = "row"
COLUMNAR = "columnar"
_WEB_SAFE = str.maketrans("-_", "+/")

# The JSON integers each integer dtype accepts, as rapidjson's IsInt / IsUint / IsInt64 /
# IsUint64 decide in TF Serving; int8, int16 and uint8 take any int32 and keep its low bits
# (TF Serving fills the TensorProto's int_val, which is truncated to the dtype).
_INT_RANGES = {
    "int8": (-(2**31), 2**31 - 1),
    "int16": (-(2**31), 2**31 - 1),
    "uint8": (-(2**31), 2**31 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_TRUNCATED = ("int8", "int16", "uint8")
#: Float dtypes a JSON number is cast to (rapidjson GetFloat / GetDouble: a static_cast, so a
#: value beyond float32's range becomes +-inf). TF Serving has no JSON conversion to half.
_FLOATS = ("float32", "float64")
_SNIPPET_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=True)


def _value_text(value: Any) -> str:
    """A JSON value quoted in an error message: compact JSON, one line, at most 256 bytes.

    The value is serialised lazily and only as far as the snippet needs, so quoting a 64 MiB
    request costs no more than quoting a small one; a value nested too deeply to serialise is
    quoted as far as it could be.
    """
    pieces: list[str] = []
    length = 0
    try:
        for piece in _SNIPPET_ENCODER.iterencode(value):
            pieces.append(piece)
            length += len(piece)
            if length > SNIPPET_BYTES:  # more characters than the limit: more bytes too
                break
    except (RecursionError, TypeError, ValueError):
        if not pieces:
            return _json_type(value)
        pieces.append("...")
    return cut_to_bytes("".join(pieces), SNIPPET_BYTES)


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype: str) -> ServingError:
    return invalid_argument(
        f"JSON Value: {_value_text(value)} Type: {_json_type(value)} is not "
        f"of expected type: {dtype_string(dtype)}"
    )


def _format_error(document: Any, text: str) -> ServingError:
    return invalid_argument(f"JSON Value: {_value_text(document)} {text}")


def _is_base64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_base64(value: Any) -> bytes:
    if not _is_base64_object(value):
        raise invalid_argument(
            f"JSON Value: {_value_text(value)} not formatted correctly for base64 data"
        )
    # Whitespace and missing padding are tolerated; web-safe '-' and '_' are read as '+' and '/'.
    text = "".join(value["b64"].split()).translate(_WEB_SAFE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _scalar(value: Any, dtype: str) -> Any:
    """One JSON leaf as a Python value of `dtype`, with TF Serving's checks and messages."""
    if dtype == "string":
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            return _decode_base64(value)
        raise _type_error(value, dtype)
    if isinstance(value, dict):
        raise _type_error(value, dtype)
    if dtype == "bool":
        if isinstance(value, bool):
            return value
        raise _type_error(value, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in _FLOATS:
        try:
            return float(value)
        except OverflowError:  # an integer beyond float64: rapidjson reads it as +-inf too
            return math.copysign(math.inf, value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    raise ServingError(
        "UNIMPLEMENTED",
        f"Conversion of JSON Value: {_value_text(value)} to type: {dtype_string(dtype)}",
    )


def _dense_shape(value: Any) -> list[int]:
    """Shape read along the first elements (GetDenseTensorShape); a scalar has shape []."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _collect(value: Any, level: int, shape: list[int], dtype: str, out: list) -> None:
    """Appends the leaves of `value` to `out`, checking it is dense (FillTensorProto)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_value_text(value)} found at incorrect level: "
                f"{level + 1} in the JSON DOM. Expected at level: {rank}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: "
            f"{level} expected size: {shape[level]}"
        )
    for item in value:
        _collect(item, level + 1, shape, dtype, out)


def _leaf_array(leaves: list, dtype: str) -> np.ndarray:
    """The flat array of checked JSON leaves (`_scalar` values) of a numeric or bool dtype."""
    if dtype == "bool":
        return np.array(leaves, dtype=bool)
    if dtype in _FLOATS:
        return _as_dtype(np.array(leaves, dtype=np.float64), dtype)
    if dtype in ("uint64",):
        return np.array(leaves, dtype=np.uint64)
    return _as_dtype(np.array(leaves, dtype=np.int64), dtype)


def _fast_array(value: Any, dtype: str) -> np.ndarray | None:
    """NumPy's C conversion when it provably gives what the exact path gives; else None.

    Only for numeric dtypes, and only called when the request body has no `true`/`false`
    token (NumPy would silently turn booleans into numbers).
    """
    if dtype not in _FLOATS and dtype not in _INT_RANGES:
        return None
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged or odd: the exact path finds and names the problem
    if dtype in _FLOATS:
        if array.dtype.kind not in "if":
            return None
    else:
        low, high = _INT_RANGES[dtype]
        if array.dtype.kind != "i" or (array.size and (array.min() < low or array.max() > high)):
            return None
    return _as_dtype(array, dtype)


def _as_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` cast to `dtype` as C++'s static_cast does: floats overflow to +-inf, and the
    int32 values of int8 / int16 / uint8 inputs keep their low bits."""
    with np.errstate(over="ignore"):
        if dtype in _TRUNCATED:
            return array.astype(np.int64, copy=False).astype(np.dtype(dtype))
        return array.astype(np.dtype(dtype), copy=False)


def _to_array(value: Any, dtype: str, fast: bool) -> np.ndarray:
    """A JSON tensor value as a NumPy array of `dtype` (TF Serving's checks and messages)."""
    if fast:
        array = _fast_array(value, dtype)
        if array is not None:
            return array
    shape = _dense_shape(value)
    leaves: list = []
    _collect(value, 0, shape, dtype, leaves)
    if dtype == "string":
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    return _leaf_array(leaves, dtype).reshape(shape)


def _rows_from_instances(
    instances: list, specs: Mapping[str, TensorSpec], fast: bool
) -> dict[str, np.ndarray]:
    """Row format (FillTensorMapFromInstancesList): one tensor per input, batched on axis 0."""
    names = sorted(specs)

    def is_element_object(value: Any) -> bool:
        return isinstance(value, dict) and not _is_base64_object(value)

    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as "
            "multiple input tensors required as per tensorinfo_map"
        )
    objects = is_element_object(instances[0])
    if fast:
        batched = _fast_rows(instances, names, specs, objects)
        if batched is not None:
            return batched
    rows: dict[str, list] = {name: [] for name in names}
    shapes: dict[str, list[int]] = {}

    def add(item: Any, name: str) -> None:
        if name not in specs:
            raise invalid_argument(f"JSON object: does not have named input: {snippet(name)}")
        shape = _dense_shape(item)
        leaves: list = []
        _collect(item, 0, shape, specs[name].dtype, leaves)
        if name in shapes:
            expected = int(np.prod(shapes[name]))
            if expected != len(leaves):
                raise invalid_argument(f"Expecting tensor size: {expected} but got: {len(leaves)}")
            if shapes[name] != shape:
                raise invalid_argument(
                    f"Expecting shape {shape_text(shapes[name])} but got: {shape_text(shape)}"
                )
        shapes[name] = shape
        rows[name].append(leaves)

    for index, element in enumerate(instances):
        if objects:
            if not is_element_object(element):
                raise invalid_argument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {snippet(name)} of "
                        f"'instances' list. Error: {error.code}: {error.message}"
                    ) from None
            if set(element) != set(names):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_value_text(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if is_element_object(element):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            try:
                add(element, names[0])
            except ServingError as error:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' "
                    f"list. Error: {error.code}: {error.message}"
                ) from None
    tensors = {}
    for name in names:
        dtype = specs[name].dtype
        flat = rows[name]
        shape = [len(instances)] + shapes[name]
        if dtype == "string":
            array = np.empty(sum(len(r) for r in flat), dtype=object)
            array[:] = [leaf for r in flat for leaf in r]
        else:
            array = _leaf_array([leaf for r in flat for leaf in r], dtype)
        tensors[name] = array.reshape(shape)
    return tensors


def _fast_rows(
    instances: list, names: list[str], specs: Mapping[str, TensorSpec], objects: bool
) -> dict[str, np.ndarray] | None:
    if not objects:
        array = _fast_array(instances, specs[names[0]].dtype)
        return None if array is None else {names[0]: array}
    wanted = set(names)
    for element in instances:
        if not isinstance(element, dict) or _is_base64_object(element) or set(element) != wanted:
            return None
    tensors = {}
    for name in names:
        array = _fast_array([element[name] for element in instances], specs[name].dtype)
        if array is None:
            return None
        tensors[name] = array
    return tensors


def _columns_from_inputs(
    value: Any, specs: Mapping[str, TensorSpec], fast: bool
) -> dict[str, np.ndarray]:
    """Columnar format (FillTensorMapFromInputsMap)."""
    names = sorted(specs)
    if not isinstance(value, dict) or _is_base64_object(value):
        if len(specs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as "
                "multiple input tensors required as per tensorinfo_map"
            )
        return {names[0]: _to_array(value, specs[names[0]].dtype, fast)}
    tensors = {}
    for name in names:
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _to_array(value[name], specs[name].dtype, fast)
    return tensors


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object (NaN/Infinity accepted), or INVALID_ARGUMENT."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    if orjson is not None:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = _parse_json_tokens(body)  # NaN / Infinity, or the standard error message
    else:
        document = _parse_json_tokens(body)
    if not isinstance(document, dict):
        raise _format_error(document, "Is not object")
    return document


def _parse_json_tokens(body: bytes):
    try:
        return json.loads(body)
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None
    except UnicodeDecodeError as error:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {error.start}"
        ) from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None


def signature_name_of(document: dict) -> str:
    """The optional `signature_name` of a request ("" when absent)."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise _format_error(
            document, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def classify_regress_examples(document: dict, method: str) -> list:
    """The `examples` of a parsed :classify or :regress request, checked as TF Serving does.

    Raises:
        ServingError: INVALID_ARGUMENT, with TF Serving's messages (naming `method`), when
            `examples` is missing, not a list or empty.
    """
    if "examples" not in document:
        raise _format_error(
            document, f"When method is {method}, key 'examples' is expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise _format_error(document, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(document, "'examples' value is an empty array")
    return examples


def predict_inputs(
    document: dict,
    body: bytes,
    specs: Mapping[str, TensorSpec],
    max_batch_size: int | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Input tensors of a parsed predict request and its format (ROW or COLUMNAR).

    Args:
        document: the parsed request object (see `parse_json`).
        body: the raw body; when it has no `true`/`false` token the NumPy fast path is safe.
        specs: the signature's inputs, name -> TensorSpec.
        max_batch_size: the most rows the request may carry (None: any number), checked before
            any tensor is built.

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's message for a malformed request, for
            tensors whose dtype or shape the signature does not accept, or for too many rows.
    """
    if not specs:
        raise invalid_argument("Failed to get input map for signature")
    try:
        return _predict_inputs(document, body, specs, max_batch_size)
    except RecursionError:
        raise invalid_argument("JSON Value nested too deeply for any tensor") from None


def _predict_inputs(
    document: dict, body: bytes, specs: Mapping[str, TensorSpec], max_batch_size: int | None
) -> tuple[dict[str, np.ndarray], str]:
    fast = b"true" not in body and b"false" not in body
    if "instances" in document:
        if "inputs" in document:
            raise _format_error(
                document,
                "Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist ",
            )
        instances = document["instances"]
        if not isinstance(instances, list):
            raise _format_error(document, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(document, "No values in 'instances' array")
        if max_batch_size is not None:
            check_batch_size(len(instances), max_batch_size, "'instances'")
        tensors, request_format = _rows_from_instances(instances, specs, fast), ROW
    elif "inputs" in document:
        if max_batch_size is not None:
            _check_columnar_batch_size(document["inputs"], specs, max_batch_size)
        tensors, request_format = _columns_from_inputs(document["inputs"], specs, fast), COLUMNAR
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    return tensors, request_format


def _check_columnar_batch_size(value: Any, specs: Mapping[str, TensorSpec], limit: int) -> None:
    """The batch-size limit on columnar `inputs`: the length of each batched input's list."""
    if isinstance(value, dict) and not _is_base64_object(value):
        named = {name: value.get(name) for name in sorted(specs)}
    else:
        named = {name: value for name in sorted(specs)}  # one input (else malformed, named later)
    for name, tensor in named.items():
        if isinstance(tensor, list) and has_batch_axis(specs[name]):
            check_batch_size(len(tensor), limit, f"input '{name}'")


@dataclass(frozen=True)
class PredictRequest:
    """A decoded REST predict request."""

    signature_name: str
    tensors: dict[str, np.ndarray]
    request_format: str  # ROW or COLUMNAR: the response uses the same


def decode_predict_request(
    body: bytes,
    signatures: Mapping[str, Mapping[str, TensorSpec]] | ServingError,
    max_batch_size: int | None = None,
    server_inputs: Mapping[str, str] | None = None,
) -> PredictRequest:
    """A REST predict body decoded for the resolved model version, in TF Serving's order: the
    JSON's own errors first, then the version's (not found), the signature's, the inputs'.

    Args:
        body: the request body.
        signatures: signature name -> its inputs' specs, of the version the path names; or the
            ServingError resolving that version raised, reported once the JSON has been read.
        max_batch_size: the most rows the request may carry (None: any number).
        server_inputs: inputs the server supplies for this request (a prior stream's
            target_prior), name -> why: the request must not send them, and is decoded as if
            the signature did not take them.

    Raises:
        ServingError: as `parse_json`, `signature_name_of` and `predict_inputs`; `signatures`
            itself; INVALID_ARGUMENT for a signature the version does not have, or for a
            server-supplied input the request sends.
    """
    document = parse_json(body)
    signature_name = signature_name_of(document) or DEFAULT_SIGNATURE
    if isinstance(signatures, ServingError):
        raise signatures
    if signature_name not in signatures:
        raise invalid_argument(
            f'Serving signature name: "{snippet(signature_name)}" not found in signature def'
        )
    specs = signatures[signature_name]
    if server_inputs:
        for name in sorted(_named_inputs(document) & set(server_inputs)):
            raise invalid_argument(f"input '{name}' must not be sent: {server_inputs[name]}")
        specs = {name: spec for name, spec in specs.items() if name not in server_inputs}
    tensors, request_format = predict_inputs(document, body, specs, max_batch_size)
    return PredictRequest(signature_name, tensors, request_format)


def _named_inputs(document: dict) -> set[str]:
    """The input names a predict request spells out (columnar keys, row objects' keys)."""
    value = document.get("inputs", document.get("instances"))
    if isinstance(value, dict) and not _is_base64_object(value):
        return set(value)
    if isinstance(value, list):
        return {
            key
            for element in value
            if isinstance(element, dict) and not _is_base64_object(element)
            for key in element
        }
    return set()
