"""The prior streams a server holds: their names, the cap with least-recently-used eviction,
each stream's model and per-version trackers, and their state files (`serving.prior_streams` is
the request path that uses them).

A stream name (STREAM_NAME) belongs to the model of its first request until the stream is reset
or evicted; it keeps one tracker per model version, made fresh for a version the stream has not
seen (so a newly served version starts from the training prior) and dropped when the version is
unloaded (`retain`). At most `max_streams` streams are held: a new one evicts the least recently
used stream that has no update in progress (`when_full="evict"`), or is refused (`"refuse"`);
RESOURCE_EXHAUSTED when nothing can be evicted. With a state directory every stream is a JSON
file (`serving.prior_stream_store`), saved before its request is answered
(`save_interval_seconds` 0) or by a background thread every interval, read back at start-up;
an evicted or reset stream's file is deleted, so files are bounded by the same cap.

Locks: the registry lock guards the set of streams and the counters; each stream's lock guards
its trackers and its file. The registry lock is taken before a stream's, never after.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

from serving.errors import ServingError, invalid_argument, snippet
from serving.prior_stream_store import StateStore, state_document
from serving.tracked_prior import (
    DEFAULT_TRACKER,
    TrackerConstants,
    make_tracker,
    restored_tracker,
)

log = logging.getLogger("serving")

#: Stream names: safe as a file name and a URL path segment.
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
WHEN_FULL = ("evict", "refuse")


@dataclass(frozen=True)
class PriorStreamOptions:
    """How the server follows prior streams (the --prior_stream_* flags).

    Attributes:
        tracker: a kind of `serving.tracked_prior.TRACKER_KINDS`.
        tracker_options: the tracker's constructor options, as (name, value) pairs.
        batch_prior: predict with `prior_for_batch` (the request's own images centred on the
            tracked prior) rather than the tracked prior alone.
        max_streams: the most streams held, over all models (memory and state files).
        when_full: "evict" (the least recently used idle stream) or "refuse" a new stream.
        state_dir: where streams are saved (None: in memory only).
        save_interval_seconds: 0: a request's update is saved before it is answered; > 0: saved
            by a background thread every interval (an update can be lost for that long).
        metrics_max_streams: streams with per-stream Prometheus series (the most updated).
    """

    tracker: str = DEFAULT_TRACKER
    tracker_options: tuple[tuple[str, Any], ...] = ()
    batch_prior: bool = True
    max_streams: int = 1000
    when_full: str = "evict"
    state_dir: str | None = None
    save_interval_seconds: float = 0.0
    metrics_max_streams: int = 10

    def settings(self) -> dict[str, Any]:
        """What a saved tracker must have been made with to be restored."""
        return {
            "tracker": self.tracker,
            "options": dict(self.tracker_options),
            "batch_prior": self.batch_prior,
        }


def check_stream_name(name: str) -> str:
    """`name`, or INVALID_ARGUMENT naming what a stream name may hold."""
    if not STREAM_NAME.fullmatch(name):
        raise invalid_argument(
            f"prior stream name {snippet(repr(name))}: expected 1 to 128 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    return name


@dataclass
class VersionState:
    tracker: Any
    updates: int = 0
    images: int = 0
    updated: float = 0.0  # seconds since the epoch of the last update


@dataclass(eq=False)
class Stream:
    name: str
    model: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    saved: dict[int, dict[str, Any]] = field(default_factory=dict)  # read back, not yet restored
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0  # updates in progress (guarded by the registry lock)
    unsaved: int = 0  # updates not yet in the state file
    removed: bool = False  # evicted or reset: no longer saved


@dataclass(frozen=True)
class PriorStreamStats:
    """What the Prometheus collector reads at scrape time."""

    streams: dict[str, int]  # model -> streams held
    updates: dict[tuple[str, int], int]  # (model, version) -> updates
    images: dict[tuple[str, int], int]
    evictions: dict[str, int]  # reason (lru, reset, version_unloaded) -> streams or versions
    state_errors: int  # state files or saved trackers that could not be restored
    unsaved_updates: int
    top: list[tuple[str, int, str, int, list[float]]]  # (model, version, stream, updates, prior)


class StreamRegistry:
    """Every prior stream of one server.

    Args:
        options: the --prior_stream_* settings.
    """

    def __init__(self, options: PriorStreamOptions):
        self.options = options
        self.settings = options.settings()
        self._lock = threading.Lock()
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self._updates: Counter[tuple[str, int]] = Counter()
        self._images: Counter[tuple[str, int]] = Counter()
        self._evictions: Counter[str] = Counter()
        self._state_errors = 0
        self.store = StateStore(options.state_dir) if options.state_dir else None
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, available: Mapping[str, set[int]]) -> None:
        """Reads the saved streams back (blocking) and starts the background saver if any."""
        if self.store is not None:
            saved, problems = self.store.read_all(STREAM_NAME.fullmatch, self.options.max_streams)
            for problem in problems:
                log.error(problem)
            self._state_errors += sum("unreadable" in problem for problem in problems)
            with self._lock:
                for entry in reversed(saved):  # oldest first: the LRU order
                    self._streams[entry.name] = Stream(
                        entry.name, entry.model, saved=entry.versions
                    )
            if saved:
                log.info("prior streams: %d read back from %s", len(saved), self.store.directory)
        self.retain(available)
        if self.store is not None and self.options.save_interval_seconds > 0:
            self._saver = threading.Thread(target=self._save_loop, name="prior-stream-saver")
            self._saver.daemon = True
            self._saver.start()

    def stop(self) -> None:
        """Stops the saver after a last save of every changed stream."""
        self._stop.set()
        if self._saver is not None:
            self._saver.join(10)
        self._save_dirty()

    def check(self, name: str, model: str) -> None:
        """FAILED_PRECONDITION for a stream of another model, RESOURCE_EXHAUSTED for a new
        stream that would be refused; checked before a request's model runs."""
        with self._lock:
            stream = self._streams.get(name)
            if stream is not None:
                self._check_model(stream, model)
            elif (
                self.options.when_full == "refuse"
                and len(self._streams) >= self.options.max_streams
            ):
                raise self._full(name)

    def acquire(self, name: str, model: str) -> Stream:
        """The stream, created (evicting or refusing when full) if new, and marked in flight
        until `release`: an update in progress is never evicted under it."""
        with self._lock:
            stream = self._streams.get(name)
            if stream is None:
                if len(self._streams) >= self.options.max_streams:
                    if self.options.when_full == "refuse":
                        raise self._full(name)
                    self._evict_one(name)
                stream = self._streams[name] = Stream(name, model)
            else:
                self._check_model(stream, model)
                self._streams.move_to_end(name)
            stream.in_flight += 1
            return stream

    def release(self, stream: Stream, update: tuple[str, int, int] | None) -> None:
        """Ends an `acquire`; `update` (model, version, images) counts a completed update."""
        with self._lock:
            stream.in_flight -= 1
            if update is not None:
                model, version, images = update
                self._updates[(model, version)] += 1
                self._images[(model, version)] += images

    def _evict_one(self, name: str) -> None:
        """Drops the least recently used stream without an update in progress (registry lock
        held)."""
        victim = next((s for s in self._streams.values() if s.in_flight == 0), None)
        if victim is None:
            raise ServingError(
                "RESOURCE_EXHAUSTED",
                f"prior stream '{name}': all {len(self._streams)} streams "
                "(--prior_stream_max_streams) have an update in progress; retry, or raise the "
                "limit",
            )
        del self._streams[victim.name]
        self._drop(victim)
        self._evictions["lru"] += 1

    def _drop(self, stream: Stream) -> None:
        with stream.lock:
            stream.removed = True
            if self.store is not None:
                self.store.remove(stream.name)

    def _full(self, name: str) -> ServingError:
        limit = self.options.max_streams
        return ServingError(
            "RESOURCE_EXHAUSTED",
            f"prior stream '{name}' would be stream {limit + 1} of at most {limit} "
            "(--prior_stream_max_streams, --prior_stream_when_full refuse): reset a stream "
            "(DELETE /v1/models/<model>/prior_streams/<stream>) or raise the limit",
        )

    @staticmethod
    def _check_model(stream: Stream, model: str) -> None:
        if stream.model != model:
            raise ServingError(
                "FAILED_PRECONDITION",
                f"prior stream '{stream.name}' follows the classes of model '{stream.model}', "
                f"not of model '{snippet(model)}': name another stream, or reset this one "
                f"(DELETE /v1/models/{stream.model}/prior_streams/{stream.name})",
            )

    def version_state(
        self, stream: Stream, version: int, constants: TrackerConstants
    ) -> VersionState:
        """The stream's state for `version` (its lock held): restored from its file if saved
        there, else a fresh tracker."""
        state = stream.versions.get(version)
        if state is not None:
            return state
        saved = stream.saved.pop(version, None)
        if saved is not None:
            try:
                if saved["settings"] != self.settings:
                    raise ValueError(
                        f"it was saved with {saved['settings']}, and the server now runs "
                        f"{self.settings}"
                    )
                tracker = restored_tracker(saved["tracker"], self.options.tracker, constants)
                state = VersionState(
                    tracker, int(saved["updates"]), int(saved["images"]), float(saved["updated"])
                )
            except (KeyError, TypeError, ValueError) as error:
                self._state_errors += 1
                log.error(
                    "prior stream '%s' (model %s version %d): its saved state cannot be "
                    "restored (%s); the stream starts fresh",
                    stream.name,
                    stream.model,
                    version,
                    str(error).splitlines()[0][:300] if str(error) else type(error).__name__,
                )
        if state is None:
            tracker = make_tracker(
                self.options.tracker, constants, dict(self.options.tracker_options)
            )
            state = VersionState(tracker)
        stream.versions[version] = state
        return state

    # ------------------------------------------------------------------ saving

    def persist(self, stream: Stream) -> None:
        """Saves a changed stream now, or marks it for the saver (its lock held)."""
        if self.store is None:
            return
        if self.options.save_interval_seconds > 0:
            stream.unsaved += 1
            with self._dirty_lock:
                self._dirty.add(stream.name)
        else:
            self._write(stream)

    def _write(self, stream: Stream) -> None:
        """Writes a stream's file (its lock held; a removed stream is not written again)."""
        if stream.removed or self.store is None:
            return
        entries = {
            version: {
                "updates": state.updates,
                "images": state.images,
                "updated": state.updated,
                "settings": self.settings,
                "tracker": state.tracker.state(),
            }
            for version, state in stream.versions.items()
        }
        entries.update(stream.saved)  # read back, not used yet: kept as they were
        try:
            self.store.write(stream.name, state_document(stream.name, stream.model, entries))
            stream.unsaved = 0
        except OSError as error:
            log.error("prior stream '%s': cannot write its state file: %s", stream.name, error)

    def _save_loop(self) -> None:
        while not self._stop.wait(self.options.save_interval_seconds):
            self._save_dirty()

    def _save_dirty(self) -> None:
        with self._dirty_lock:
            names, self._dirty = self._dirty, set()
        for name in sorted(names):
            with self._lock:
                stream = self._streams.get(name)
            if stream is not None:
                with stream.lock:
                    self._write(stream)

    # ------------------------------------------------------------------ versions, REST, metrics

    def retain(self, available: Mapping[str, set[int]]) -> None:
        """Drops the trackers of model versions no longer served (after every model poll)."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            served = available.get(stream.model, set())
            with stream.lock:
                gone = [v for v in [*stream.versions, *stream.saved] if v not in served]
                for version in gone:
                    stream.versions.pop(version, None)
                    stream.saved.pop(version, None)
                if gone:
                    self._evictions["version_unloaded"] += len(gone)
                    self.persist(stream)

    def held(self, model: str, name: str) -> Stream:
        """A stream of `model`, or NOT_FOUND."""
        with self._lock:
            stream = self._streams.get(name)
        if stream is None or stream.model != model:
            raise ServingError("NOT_FOUND", f"prior stream '{name}' not found for model '{model}'")
        return stream

    def list_json(self, model: str) -> dict:
        """GET /v1/models/<model>/prior_streams: the model's streams, least recently used first."""
        with self._lock:
            streams = [s for s in self._streams.values() if s.model == model]
            held = len(self._streams)
        listed = []
        for stream in streams:
            with stream.lock:
                versions = {
                    str(v): {
                        "updates": s.updates,
                        "images": s.images,
                        "last_update": timestamp(s.updated),
                    }
                    for v, s in sorted(stream.versions.items())
                }
                versions.update(
                    {
                        str(v): {
                            "updates": s["updates"],
                            "images": s["images"],
                            "last_update": None,
                        }
                        for v, s in sorted(stream.saved.items())
                    }
                )
            listed.append({"stream": stream.name, "versions": versions})
        return {
            "model_spec": {"name": model},
            "prior_streams": listed,
            "streams_held": held,
            "max_streams": self.options.max_streams,
        }

    def reset(self, model: str, version: int | None, name: str) -> dict:
        """DELETE .../prior_streams/<name>: the whole stream (version None) or one version's
        state; the next request starts from the training prior."""
        check_stream_name(name)
        stream = self.held(model, name)
        if version is None:
            with self._lock:
                if self._streams.get(name) is stream:
                    del self._streams[name]
            self._drop(stream)
            with stream.lock:
                dropped = sorted([*stream.versions, *stream.saved])
        else:
            with stream.lock:
                if version not in stream.versions and version not in stream.saved:
                    raise ServingError(
                        "NOT_FOUND", f"prior stream '{name}' has no state for version {version}"
                    )
                stream.versions.pop(version, None)
                stream.saved.pop(version, None)
                self.persist(stream)
            dropped = [version]
        self._evictions["reset"] += 1
        return {"model_spec": {"name": model}, "stream": name, "reset_versions": dropped}

    def stats(self) -> PriorStreamStats:
        """The figures the Prometheus collector exports (bounded: see `metrics_max_streams`)."""
        with self._lock:
            streams = list(self._streams.values())
            updates, images = dict(self._updates), dict(self._images)
            evictions = dict(self._evictions)
        by_model: Counter[str] = Counter(s.model for s in streams)
        ranked = []
        for stream in streams:
            for version, state in list(stream.versions.items()):
                ranked.append((state.updates, stream.model, version, stream.name, state))
        ranked.sort(key=lambda entry: entry[0], reverse=True)
        top = [
            (model, version, name, count, state.tracker.prior.tolist())
            for count, model, version, name, state in ranked[: self.options.metrics_max_streams]
        ]
        return PriorStreamStats(
            dict(by_model),
            updates,
            images,
            evictions,
            self._state_errors,
            sum(s.unsaved for s in streams),
            top,
        )


def timestamp(seconds: float) -> str | None:
    """An update time as ISO 8601 UTC text (None: never updated)."""
    if not seconds:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
