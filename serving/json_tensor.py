"""JSON <-> tensors for the Predict REST API, with TF Serving's formats and error messages.

Mirrors tensorflow_serving/util/json_tensor.cc: a request carries either `instances` (row format,
one entry per batch row, objects keyed by input name when the signature has several inputs) or
`inputs` (columnar format: one value, or an object of input name -> tensor); string inputs may be
`{"b64": "..."}`. A row request is answered with `predictions` (a list; a list of objects when
there are several outputs), a columnar one with `outputs` (a value, or an object of output name ->
tensor). Floats are written with the shortest text that reads back as the same float32/float64,
NaN/Infinity as bare tokens, outputs whose name ends in `_bytes` as `{"b64": ...}`. As in TF
Serving 2.18, any number sent to a float input is cast, and int8 / int16 / uint8 inputs take an
int32 and keep its low bits.
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

from serving.status import ServingError, invalid_argument

ROW = "row"
_WEB_SAFE = str.maketrans("-_", "+/")
COLUMNAR = "columnar"

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


@dataclass(frozen=True)
class TensorSpec:
    """What a signature input expects: a TensorFlow dtype name and a shape (None = any size)."""

    dtype: str
    shape: tuple[int | None, ...] | None

    def shape_text(self) -> str:
        if self.shape is None:
            return "[?]"
        return "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"


# ---------------------------------------------------------------------------------------------
# Requests


#: Longest quote of a request in an error message, in UTF-8 bytes (TF Serving's snippet size).
SNIPPET_BYTES = 256
#: Longest error message in a response body; a safety net over messages not built from snippets.
MAX_ERROR_BYTES = 16 * 1024
_SNIPPET_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=True)


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, ending in "..." when something was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore") + "..."


def snippet(text: str) -> str:
    """Request text (a name, a path) quoted in an error message: one line, at most 256 bytes."""
    return _cut(text.replace("\r", "\\r").replace("\n", "\\n"), SNIPPET_BYTES)


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
    return _cut("".join(pieces), SNIPPET_BYTES)


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
        f"of expected type: {_DTYPE_STRINGS.get(dtype, dtype)}"
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
        f"Conversion of JSON Value: {_value_text(value)} to "
        f"type: {_DTYPE_STRINGS.get(dtype, dtype)}",
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


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


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
                    f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}"
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
    document: dict, body: bytes, specs: Mapping[str, TensorSpec]
) -> tuple[dict[str, np.ndarray], str]:
    """Input tensors of a parsed predict request and its format (ROW or COLUMNAR).

    Args:
        document: the parsed request object (see `parse_json`).
        body: the raw body; when it has no `true`/`false` token the NumPy fast path is safe.
        specs: the signature's inputs, name -> TensorSpec.

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's message for a malformed request, or for
            tensors whose dtype or shape the signature does not accept.
    """
    if not specs:
        raise invalid_argument("Failed to get input map for signature")
    try:
        return _predict_inputs(document, body, specs)
    except RecursionError:
        raise invalid_argument("JSON Value nested too deeply for any tensor") from None


def _predict_inputs(
    document: dict, body: bytes, specs: Mapping[str, TensorSpec]
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
        tensors, request_format = _rows_from_instances(instances, specs, fast), ROW
    elif "inputs" in document:
        tensors, request_format = _columns_from_inputs(document["inputs"], specs, fast), COLUMNAR
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    return tensors, request_format


def check_shape(name: str, tensor: np.ndarray, spec: TensorSpec) -> None:
    """INVALID_ARGUMENT unless `tensor`'s shape fits the signature input `spec`."""
    if spec.shape is None:
        return
    shape = tensor.shape
    if len(shape) != len(spec.shape) or any(
        want is not None and want != got for want, got in zip(spec.shape, shape)
    ):
        raise invalid_argument(
            f"input tensor '{name}' has shape {_shape_text(shape)}, but the signature expects "
            f"{spec.shape_text()} (-1: any size)"
        )


# ---------------------------------------------------------------------------------------------
# Responses


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
    return json.dumps({"error": _cut(message, MAX_ERROR_BYTES)}).encode("utf-8")
