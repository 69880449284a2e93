"""Error codes: the canonical codes, their HTTP statuses, and the error every layer raises.

TF Serving answers every failed REST call with `{"error": "<message>"}` and an HTTP status chosen
from the gRPC/TensorFlow error code (`ToHTTPStatusCode` in tensorflow_serving's http_server.cc),
and every failed gRPC call with the same code. Request text quoted in a message (a name, a path)
goes through `snippet`, so a message stays one short line whatever the request held.
"""

from __future__ import annotations

#: TensorFlow / gRPC canonical code -> HTTP status (TF Serving's mapping).
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

#: Numeric codes (tensorflow/core/protobuf/error_codes.proto) -> names.
_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


#: Longest quote of a request in an error message, in UTF-8 bytes (TF Serving's snippet size).
SNIPPET_BYTES = 256
#: Longest error message in a response body; a safety net over messages not built from snippets.
MAX_ERROR_BYTES = 16 * 1024


def cut_to_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, ending in "..." when something was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore") + "..."


def snippet(text: str) -> str:
    """Request text (a name, a path) quoted in an error message: one line, at most 256 bytes."""
    return cut_to_bytes(text.replace("\r", "\\r").replace("\n", "\\n"), SNIPPET_BYTES)


class ServingError(Exception):
    """A failed request: a canonical code (e.g. "INVALID_ARGUMENT") and the message for the body."""

    def __init__(self, code: str, message: str):
        if code not in HTTP_STATUS or code == "OK":
            raise ValueError(f"code = {code!r}: expected one of {sorted(HTTP_STATUS)[1:]}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):
        # Pickled with both arguments: requests decoded in another process raise it there.
        return type(self), (self.code, self.message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def invalid_argument(message: str) -> ServingError:
    """Shorthand for the commonest error: a bad request (HTTP 400)."""
    return ServingError("INVALID_ARGUMENT", message)


def from_tensorflow_error(error: Exception) -> ServingError:
    """The ServingError for an exception raised while running a TensorFlow function.

    `tf.errors.OpError` keeps its code (a failed `tf.debugging` assertion is INVALID_ARGUMENT,
    HTTP 400, as in TF Serving); anything else is INTERNAL (HTTP 500).
    """
    code = getattr(error, "error_code", None)
    message = getattr(error, "message", None) or str(error)
    if isinstance(code, int) and code in _CODE_NAMES and code != 0:
        return ServingError(_CODE_NAMES[code], message)
    return ServingError("INTERNAL", f"{type(error).__name__}: {message}")


def grpc_status_code(code: str):
    """The `grpc.StatusCode` of a canonical code name (the codes are the same in gRPC)."""
    import grpc

    return grpc.StatusCode[code]
