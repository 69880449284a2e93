"""One SavedModel version in memory (TF Serving's servable): loading it, running its signatures.

`LoadedVersion` loads a version with `tf.saved_model.load` and reads its signature defs; a failed
load is classified by `load_error_code` with the canonical code TensorFlow gives it, which is what
TF Serving reports. `Signature.run` runs one signature on NumPy tensors, in calls of at most
`MAX_ROWS_PER_RUN` rows where the signature's rows are independent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np
from google.protobuf.message import DecodeError

from serving.batching import batchable
from serving.errors import ServingError, from_tensorflow_error, invalid_argument, snippet
from serving.signature_inputs import TensorSpec
from serving.storage import join, read_bytes

if TYPE_CHECKING:
    from tensorflow_serving.apis import get_model_metadata_pb2

_SERVE_TAG = "serve"
# TensorFlow's CPU allocator with oneDNN on keeps the largest pool any call has needed for the life
# of the process, so one call over thousands of rows would hold its activations' memory for good.
# Signatures whose rows are independent run in calls of at most this many rows, which bounds that
# pool by the model and not by the request; batch-level signatures
# (`serving.batching.BATCH_LEVEL_SIGNATURES`) always run whole.
MAX_ROWS_PER_RUN = 128
# The Python exceptions TensorFlow raises for a failed status, mapped back to its canonical code
# (tensorflow/python/lib/core/pybind11_status.h; saved_model's load.py re-raises NOT_FOUND as
# FileNotFoundError), so that a failed load reports the code TF Serving would.
_PYTHON_ERROR_CODES = (
    (FileNotFoundError, "NOT_FOUND"),
    (PermissionError, "PERMISSION_DENIED"),
    (IndexError, "OUT_OF_RANGE"),
    (ValueError, "INVALID_ARGUMENT"),
    (NotImplementedError, "UNIMPLEMENTED"),
)


@dataclass
class Signature:
    """A callable signature of a loaded version and its input specs."""

    name: str
    inputs: dict[str, TensorSpec]
    function: object

    def run(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the signature, in calls of at most MAX_ROWS_PER_RUN rows when its rows are
        independent; TensorFlow errors become ServingErrors with their code."""
        rows = _common_rows(tensors)
        if rows is None or rows <= MAX_ROWS_PER_RUN or not batchable(self.name):
            return self._call(tensors)
        parts = []
        for start in range(0, rows, MAX_ROWS_PER_RUN):
            stop = min(start + MAX_ROWS_PER_RUN, rows)
            outputs = self._call({name: value[start:stop] for name, value in tensors.items()})
            if any(np.ndim(value) == 0 or len(value) != stop - start for value in outputs.values()):
                return self._call(tensors)  # outputs not one row per input row: run it whole
            parts.append(outputs)
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _call(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        try:
            feeds = {
                name: tf.constant(value, dtype=self.inputs[name].dtype)
                for name, value in tensors.items()
            }
            outputs = self.function(**feeds)
            return {name: value.numpy() for name, value in outputs.items()}
        except tf.errors.OpError as error:
            raise from_tensorflow_error(error) from None
        except (TypeError, ValueError) as error:
            raise invalid_argument(snippet(str(error))) from None


def _common_rows(tensors: Mapping[str, np.ndarray]) -> int | None:
    """The size of axis 0 shared by every input, or None (a scalar input, or sizes differ)."""
    sizes = {np.shape(value)[0] if np.ndim(value) else None for value in tensors.values()}
    return sizes.pop() if len(sizes) == 1 else None


class LoadedVersion:
    """One loaded SavedModel version: its signatures and its signature_def map as JSON.

    Raises:
        ServingError: NOT_FOUND without a saved_model.pb, DATA_LOSS when it cannot be parsed
            (TensorFlow's codes and messages for them).
        Exception: whatever `tf.saved_model.load` raises (see `load_error_code`).
    """

    def __init__(self, model_name: str, version: int, path: str):
        import tensorflow as tf

        self.model_name = model_name
        self.version = version
        self.path = path
        # Read first: a missing or corrupt saved_model.pb is then named with TensorFlow's code.
        self.signature_def_map = self._read_signature_defs(path)
        self._saved_model = tf.saved_model.load(path, tags=[_SERVE_TAG])
        self.signatures: dict[str, Signature] = {}
        for name, function in self._saved_model.signatures.items():
            specs = function.structured_input_signature[1]
            self.signatures[name] = Signature(
                name,
                {
                    key: TensorSpec(
                        spec.dtype.name,
                        None if spec.shape.rank is None else tuple(spec.shape.as_list()),
                    )
                    for key, spec in specs.items()
                },
                function,
            )
        self.signature_inputs = {name: s.inputs for name, s in self.signatures.items()}

    @staticmethod
    def _read_signature_defs(path: str) -> get_model_metadata_pb2.SignatureDefMap:
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        graph_path = join(path, "saved_model.pb")
        try:
            data = read_bytes(graph_path)
        except FileNotFoundError:
            raise ServingError(
                "NOT_FOUND",
                f"Could not find SavedModel .pb at supplied export directory path: {path}",
            ) from None
        saved_model = saved_model_pb2.SavedModel()
        try:
            with warnings.catch_warnings():
                # Raised for trailing garbage; the count of bytes parsed below tells it instead.
                warnings.simplefilter("ignore", RuntimeWarning)
                parsed = saved_model.ParseFromString(data)
        except DecodeError:
            parsed = None
        if parsed != len(data):  # TensorFlow's ReadBinaryProto: the whole file must parse
            raise ServingError("DATA_LOSS", f"Can't parse {graph_path} as binary proto")
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        serving_graphs = [g for g in saved_model.meta_graphs if _SERVE_TAG in g.meta_info_def.tags]
        if not serving_graphs:
            raise ServingError(
                "NOT_FOUND",
                f"Could not find meta graph def matching supplied tags: {{ {_SERVE_TAG} }}. To "
                "inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
                "`saved_model_cli`",
            )
        for meta_graph in serving_graphs:
            for key, value in meta_graph.signature_def.items():
                signature_defs.signature_def[key].CopyFrom(value)
        return signature_defs


def load_error_code(error: Exception) -> str:
    """The canonical code of a failed load, as TensorFlow (and so TF Serving) reports it."""
    if isinstance(error, ServingError):
        return error.code
    if isinstance(getattr(error, "error_code", None), int):  # a tf.errors.OpError
        return from_tensorflow_error(error).code
    for kind, name in _PYTHON_ERROR_CODES:
        if isinstance(error, kind):
            return name
    return "UNKNOWN"
