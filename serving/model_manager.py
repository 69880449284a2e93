"""Models, versions and labels, managed the way TF Serving's ServerCore manages them.

Each model has a base path whose numeric sub-directories are versions (SavedModels). A poll of
the file system (TF Serving's FileSystemStoragePathSource) loads the versions the model's version
policy asks for (default: the latest one) and unloads the others; a new version is loaded before
the old one is unloaded, so the model never stops answering. A version that fails to load is
END in the model status, with the canonical code TensorFlow gives the failure (DATA_LOSS for a
corrupt saved_model.pb, as in TF Serving), and is retried once its files change. Under the
"latest" policy the newest versions that do load are served instead, at start-up too: where TF
Serving refuses to start, this server falls back and says so in the status, the log and the
`load_attempt_count` metric (a model none of whose versions loads still stops the start-up, see
`ModelManager.unavailable_models`). Version labels come from the model config. Status and
metadata are rendered as the JSON of TF Serving's GetModelStatusResponse and
GetModelMetadataResponse protos.

Local config files and base paths are checked without TensorFlow, which is imported (a matter of
seconds) only when the first version loads, so a bad flag or file is reported at once. Paths with
a scheme (gs://, s3://, ram://, ...) go through tf.io.gfile (`serving.storage`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from google.protobuf import json_format, text_format
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError, invalid_argument
from serving.servable import LoadedVersion, load_error_code
from serving.storage import (
    numbered_subdirectories,
    read_text_file,
    tree_stamp,
)

if TYPE_CHECKING:
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

log = logging.getLogger("serving")


@dataclass(frozen=True)
class ModelConfig:
    """One entry of TF Serving's model_config_list."""

    name: str
    base_path: str
    policy: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1  # for "latest"
    versions: tuple[int, ...] = ()  # for "specific"
    labels: Mapping[str, int] = field(default_factory=dict)


def parse_model_config(text: str) -> list[ModelConfig]:
    """Model configs from TF Serving's text-proto ModelServerConfig (`model_config_list`).

    Raises:
        ValueError: unparsable text, a platform other than "tensorflow", a missing name or
            base_path, or a duplicate model name.
    """
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"model config is not a text ModelServerConfig: {error}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError(
            "model config: expected a model_config_list (custom_model_config is not supported)"
        )
    configs = []
    for entry in proto.model_config_list.config:
        if not entry.name or not entry.base_path:
            text = text_format.MessageToString(entry, as_one_line=True)
            raise ValueError(f"model config entry {text!r}: expected both name and base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"model {entry.name!r}: model_platform {entry.model_platform!r} is "
                'not supported, expected "tensorflow"'
            )
        choice = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        policy = entry.model_version_policy
        configs.append(
            ModelConfig(
                name=entry.name,
                base_path=entry.base_path,
                policy=choice,
                num_versions=max(1, policy.latest.num_versions) if choice == "latest" else 1,
                versions=tuple(policy.specific.versions) if choice == "specific" else (),
                labels=dict(entry.version_labels),
            )
        )
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"model config: duplicate model names in {names}")
    return configs


def read_model_config_file(path: str) -> list[ModelConfig]:
    """`parse_model_config` of a file (TF Serving's --model_config_file).

    Raises:
        ValueError: the file cannot be read (see `read_text_file`) or is not a valid config.
    """
    return parse_model_config(read_text_file(path))


def _versions_text(versions) -> str:
    """Version numbers for a log line, newest first: 'version 2', 'versions 4, 3'."""
    numbers = sorted(versions, reverse=True)
    return ("version " if len(numbers) == 1 else "versions ") + ", ".join(map(str, numbers))


@dataclass
class VersionState:
    state: str  # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""


class ModelVersions:
    """The versions of one model: what is loaded, what each version's state is, its labels."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.available: dict[int, LoadedVersion] = {}
        self.states: dict[int, VersionState] = {}
        self._failed: dict[int, tuple] = {}  # version -> tree stamp of the failed load
        self.load_attempts: Counter[tuple[str, str]] = Counter()  # (path, success|fail) -> n
        self._path_problem: str | None = None
        self.polled = False  # whether `sync` has looked at the base path yet

    def aspired(self, on_disk: Mapping[int, str]) -> set[int]:
        """Versions the policy wants loaded."""
        versions = sorted(on_disk)
        if self.config.policy == "all":
            return set(versions)
        if self.config.policy == "specific":
            return set(versions) & set(self.config.versions)
        return set(versions[-self.config.num_versions :])

    def sync(self) -> None:
        """One poll: load aspired versions not yet loaded, then unload the others (blocking).

        Under the "latest" policy a version that fails to load gives its place to the next older
        one, so the newest versions that load are served (logged as a fallback). A base path that
        turned into a file or cannot be listed is logged (once, not on every poll) and changes
        nothing: the loaded versions keep serving.
        """
        self.polled = True
        try:
            on_disk = numbered_subdirectories(self.config.base_path)
        except ValueError as error:
            self._report_path_problem(str(error))
            return
        self._report_path_problem(None)
        if not on_disk and not self.available:
            log.warning(
                "No versions of servable %s found under base path %s",
                self.config.name,
                self.config.base_path,
            )
        loadable = {v: path for v, path in on_disk.items() if not self._failed_unchanged(v, path)}
        failed_now: list[int] = []
        while True:
            aspired = self.aspired(loadable)
            pending = sorted(aspired - set(self.available), reverse=True)
            failed = [version for version in pending if not self._load(version, loadable[version])]
            failed_now += failed
            if not failed or self.config.policy != "latest":
                break
            for version in failed:
                del loadable[version]
        if failed_now and self.available:
            log.warning(
                "model %s: serving %s, the newest that loads; %s failed to load (the model "
                "status holds the errors)",
                self.config.name,
                _versions_text(self.available),
                _versions_text(failed_now),
            )
        # AvailabilityPreservingPolicy: keep old versions until an aspired one is available.
        if aspired and not aspired & set(self.available):
            return
        for version in sorted(set(self.available) - aspired):
            self.states[version] = VersionState("UNLOADING")
            self.available = {v: loaded for v, loaded in self.available.items() if v != version}
            self.states[version] = VersionState("END")
            log.info("Unloaded servable version {name: %s version: %d}", self.config.name, version)

    def _failed_unchanged(self, version: int, path: str) -> bool:
        """Whether `version` failed to load and its files have not changed since: it is retried
        only once they do."""
        return version in self._failed and self._failed[version] == tree_stamp(path)

    def _load(self, version: int, path: str) -> bool:
        """Loads one version; a failure is logged and kept in its state. Whether it loaded."""
        stamp = tree_stamp(path)
        self.states[version] = VersionState("LOADING")
        try:
            loaded = LoadedVersion(self.config.name, version, path)
        except Exception as error:  # noqa: BLE001 - any load failure is reported, not fatal
            code = load_error_code(error)
            detail = (
                error.message
                if isinstance(error, ServingError)
                else f"{type(error).__name__}: {error}"
            )
            message = (
                f"Loading servable: {{name: {self.config.name} version: {version}}} "
                f"failed: {code}: {detail}"
            )
            log.error(message)
            self.states[version] = VersionState("END", code, message)
            self._failed[version] = stamp
            self.load_attempts[(path, "fail")] += 1
            return False
        self._failed.pop(version, None)
        self.available = {**self.available, version: loaded}
        self.states[version] = VersionState("AVAILABLE")
        self.load_attempts[(path, "success")] += 1
        log.info(
            "Successfully loaded servable version {name: %s version: %d} from %s",
            self.config.name,
            version,
            path,
        )
        return True

    def _report_path_problem(self, problem: str | None) -> None:
        if problem is not None and problem != self._path_problem:
            log.error(
                "model %s: %s; serving continues with the loaded versions",
                self.config.name,
                problem,
            )
        self._path_problem = problem

    def unload_all(self) -> None:
        """Marks every loaded version END and drops it (the model left the config)."""
        for version in list(self.available):
            self.states[version] = VersionState("END")
        self.available = {}

    def version_for_label(self, label: str) -> int:
        """The version a label names, or INVALID_ARGUMENT as in TF Serving."""
        if label not in self.config.labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return self.config.labels[label]


class ModelManager:
    """All served models; `poll` is the file-system poll, the rest answers requests."""

    def __init__(self, configs: list[ModelConfig]):
        self._lock = threading.Lock()
        self.models: dict[str, ModelVersions] = {c.name: ModelVersions(c) for c in configs}

    def reconfigure(self, configs: list[ModelConfig]) -> None:
        """Applies a new model config list: new models are added, removed ones unloaded."""
        with self._lock:
            models = {}
            for config in configs:
                current = self.models.get(config.name)
                if current is None or current.config.base_path != config.base_path:
                    models[config.name] = ModelVersions(config)
                else:
                    current.config = config
                    models[config.name] = current
            for name, current in self.models.items():
                if models.get(name) is not current:
                    current.unload_all()
            self.models = models

    def poll(self, new_only: bool = False) -> None:
        """Syncs every model with its base path (blocking: call it off the event loop).

        Args:
            new_only: sync only the models never polled yet (those a `reconfigure` added), as
                TF Serving does for them with --file_system_poll_wait_seconds 0 (poll once).
        """
        with self._lock:
            for model in list(self.models.values()):
                if not (new_only and model.polled):
                    model.sync()

    def _label_version(self, name: str, label: str) -> int:
        model = self.models.get(name)
        if model is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return model.version_for_label(label)

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> LoadedVersion:
        """The loaded version a request names (latest when neither version nor label is given).

        Raises:
            ServingError: NOT_FOUND "Servable not found for request: ..." or INVALID_ARGUMENT
                for an unknown label, with TF Serving's messages.
        """
        if label is not None:
            version = self._label_version(name, label)
        model = self.models.get(name)
        available = model.available if model is not None else {}
        if version is None:
            if not available:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return available[max(available)]
        if version not in available:
            raise ServingError(
                "NOT_FOUND", f"Servable not found for request: Specific({name}, {version})"
            )
        return available[version]

    def status_proto(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusResponse, as TF Serving's GetModelStatusImpl builds it.

        A version label is ignored, as in TF Serving: status by label lists every version.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version.
        """
        from tensorflow_serving.apis import get_model_status_pb2, status_pb2

        del label  # TF Serving answers a label with the status of all versions
        model = self.models.get(name)
        states = dict(model.states) if model is not None else {}
        error_codes = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
        response = get_model_status_pb2.GetModelStatusResponse()
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            selected = [version]
        else:
            if not states:
                raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            selected = sorted(states, reverse=True)
        for number in selected:
            state = states[number]
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.error_code = error_codes.values_by_name[state.error_code].number
            entry.status.error_message = state.error_message
        return response

    def status_json(self, name: str, version: int | None = None, label: str | None = None) -> dict:
        """`status_proto` as TF Serving's REST API renders it."""
        return json_format.MessageToDict(
            self.status_proto(name, version, label),
            including_default_value_fields=True,
            preserving_proto_field_name=True,
        )

    def metadata_proto(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadataResponse with the signature_def metadata field (TF Serving's one).

        Raises:
            ServingError: as `resolve`.
        """
        from tensorflow_serving.apis import get_model_metadata_pb2

        loaded = self.resolve(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(loaded.signature_def_map)
        return response

    def metadata_json(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> dict:
        """GetModelMetadataResponse (signature_def only, like TF Serving) as REST JSON."""
        loaded = self.resolve(name, version, label)
        spec = model_pb2.ModelSpec(name=name)
        spec.version.value = loaded.version
        options = {"including_default_value_fields": True, "preserving_proto_field_name": True}
        return {
            "model_spec": json_format.MessageToDict(spec, **options),
            "metadata": {
                "signature_def": json_format.MessageToDict(loaded.signature_def_map, **options)
            },
        }

    def available_versions(self) -> dict[str, set[int]]:
        """Model name -> the versions loaded (AVAILABLE) now."""
        return {name: set(model.available) for name, model in list(self.models.items())}

    def loaded_versions(self) -> dict[str, int]:
        """Model name -> number of versions loaded (AVAILABLE) now."""
        return {name: len(model.available) for name, model in list(self.models.items())}

    def load_attempts(self) -> dict[tuple[str, str], int]:
        """(version path, "success" | "fail") -> SavedModel loads so far, every model."""
        attempts: Counter[tuple[str, str]] = Counter()
        for model in list(self.models.values()):
            attempts.update(model.load_attempts)
        return dict(attempts)

    def unavailable_models(self) -> list[str]:
        """One line per model that has versions but none of them loaded, naming each failed
        version and its error: such a model is up but can answer nothing."""
        lines = []
        for name, model in sorted(self.models.items()):
            failed = {v: s for v, s in model.states.items() if s.error_code != "OK"}
            if failed and not model.available:
                errors = "; ".join(s.error_message for _, s in sorted(failed.items(), reverse=True))
                lines.append(f"model {name!r}: no version loads ({errors})")
        return lines
