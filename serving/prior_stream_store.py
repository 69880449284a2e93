"""Prior stream state on disk (--prior_stream_state_dir): one JSON file per stream, written
atomically, read back at start-up.

A file `<dir>/<stream>.json` holds the stream's model and, per model version, its update counts
and its tracker's `state()` (`lade_tf.prior_tracking`). It is written to a temporary file in the
same directory and renamed over the old one, so a reader (or a restart after SIGKILL) sees either
the previous complete state or the new one, never a mixture. The data is not fsync'd: a killed
process loses nothing it wrote; a machine that loses power can lose what the operating system had
not yet flushed. Start-up reads every file (`StateStore.read_all`); one that is not a state
document (truncated, garbage, another format) is renamed to `<stream>.json.unreadable`, reported,
and its stream starts fresh.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

STATE_FORMAT = "lade_serving.prior_stream/1"
SUFFIX = ".json"
UNREADABLE_SUFFIX = ".unreadable"
_TEMPORARY_PREFIX = "."  # temporary files start with a dot, which no stream name does


@dataclass(frozen=True)
class SavedStream:
    """One stream read back from its file."""

    name: str
    model: str
    versions: dict[int, dict[str, Any]]  # version -> {"updates", "images", "settings", "tracker"}
    modified: float  # the file's modification time (seconds since the epoch)


def state_document(name: str, model: str, versions: Mapping[int, Mapping[str, Any]]) -> dict:
    """The JSON document of one stream's file."""
    return {
        "format": STATE_FORMAT,
        "stream": name,
        "model": model,
        "versions": {str(version): dict(entry) for version, entry in sorted(versions.items())},
    }


def parse_state_document(name: str, document: Any) -> tuple[str, dict[int, dict[str, Any]]]:
    """(model, version -> entry) of a stream's document.

    Raises:
        ValueError: not a state document of this format for this stream.
    """
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"not a prior stream state (format {found!r}, expected {STATE_FORMAT!r})")
    if document.get("stream") != name:
        raise ValueError(f"it holds stream {document.get('stream')!r}, not {name!r}")
    model, versions = document.get("model"), document.get("versions")
    if not isinstance(model, str) or not model or not isinstance(versions, dict):
        raise ValueError("expected a model name and a versions object")
    parsed: dict[int, dict[str, Any]] = {}
    for key, entry in versions.items():
        if not (isinstance(key, str) and key.isdigit()) or not isinstance(entry, dict):
            raise ValueError(f"version {key!r}: expected a version number and an object")
        missing = sorted({"updates", "images", "settings", "tracker"} - set(entry))
        if missing:
            raise ValueError(f"version {key}: missing {', '.join(missing)}")
        parsed[int(key)] = entry
    return model, parsed


class StateStore:
    """The state files of a directory (local: renames must be atomic).

    Args:
        directory: created when missing.

    Raises:
        ValueError: the directory cannot be created or written.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the directory ({error.strerror or error})") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ValueError("the directory is not writable")

    def path(self, name: str) -> str:
        """The file of stream `name` (a checked stream name)."""
        return os.path.join(self.directory, name + SUFFIX)

    def write(self, name: str, document: Mapping[str, Any]) -> None:
        """Writes a stream's document atomically (temporary file, then rename)."""
        data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
        handle, temporary = tempfile.mkstemp(
            prefix=f"{_TEMPORARY_PREFIX}{name}.", suffix=".tmp", dir=self.directory
        )
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, self.path(name))
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise

    def remove(self, name: str) -> None:
        """Deletes a stream's file (a missing file is fine)."""
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def read_all(self, is_name, limit: int) -> tuple[list[SavedStream], list[str]]:
        """Every stream file, newest first, at most `limit` of them.

        Temporary files a killed process left are deleted. A file that cannot be read as a
        state document is renamed to `<name>.json.unreadable`; a valid one beyond `limit` (the
        stream cap was lowered) is deleted. Both are reported.

        Args:
            is_name: whether a file stem is a valid stream name.
            limit: the most streams to keep.

        Returns:
            (the streams read, one line per problem for the log).
        """
        streams: list[SavedStream] = []
        problems: list[str] = []
        for entry in sorted(os.scandir(self.directory), key=_modified, reverse=True):
            if entry.name.startswith(_TEMPORARY_PREFIX) and entry.name.endswith(".tmp"):
                _unlink(entry.path)
                continue
            stem = entry.name[: -len(SUFFIX)] if entry.name.endswith(SUFFIX) else None
            if stem is None or not entry.is_file() or not is_name(stem):
                continue
            try:
                with open(entry.path, "rb") as handle:
                    model, versions = parse_state_document(stem, json.loads(handle.read()))
            except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeError included
                os.replace(entry.path, entry.path + UNREADABLE_SUFFIX)
                problems.append(
                    f"prior stream state file {entry.path} is unreadable ({_first_line(error)}); "
                    f"moved to {entry.name + UNREADABLE_SUFFIX}, stream {stem!r} starts fresh"
                )
                continue
            if len(streams) >= limit:
                _unlink(entry.path)
                problems.append(
                    f"prior stream state file {entry.path} dropped: more than {limit} streams "
                    "(--prior_stream_max_streams) saved; the least recently saved go"
                )
                continue
            streams.append(SavedStream(stem, model, versions, _modified(entry)))
        return streams, problems


def _modified(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _first_line(error: Exception) -> str:
    text = str(error).splitlines()
    return (text[0] if text else type(error).__name__)[:200]
