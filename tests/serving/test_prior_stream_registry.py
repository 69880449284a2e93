"""serving.prior_stream_registry without a server: an update in progress is never evicted, the
trackers of unloaded versions go, and a saved state made with other settings is reported and
replaced by a fresh tracker."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from serving.errors import ServingError
from serving.prior_stream_registry import PriorStreamOptions, StreamRegistry
from serving.tracked_prior import TrackerConstants

pytestmark = pytest.mark.timeout(60)
CONSTANTS = TrackerConstants(
    np.array([0.5, 0.3, 0.2]), np.full(3, 1 / 3), 10.0, None, ("a", "b", "c")
)


def updated(registry: StreamRegistry, name: str, version: int = 1, release: bool = True):
    stream = registry.acquire(name, "lade")
    with stream.lock:
        state = registry.version_state(stream, version, CONSTANTS)
        state.tracker.update(np.array([[0.1, 0.1, 0.8]]))
        state.updates += 1
        registry.persist(stream)
    if release:
        registry.release(stream, ("lade", version, 1))
    return stream


def test_a_stream_with_an_update_in_progress_is_never_evicted():
    registry = StreamRegistry(PriorStreamOptions(max_streams=2))
    busy = updated(registry, "busy", release=False)
    updated(registry, "idle")
    updated(registry, "new")  # evicts "idle", the least recently used idle stream
    assert registry.held("lade", "busy") is busy
    with pytest.raises(ServingError, match="not found"):
        registry.held("lade", "idle")
    busy_too = registry.acquire("new", "lade")  # both held streams now in progress
    with pytest.raises(ServingError) as caught:
        registry.acquire("third", "lade")
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    assert "all 2 streams (--prior_stream_max_streams) have an update in progress" in str(
        caught.value
    )
    registry.release(busy_too, None)
    registry.release(busy, None)
    registry.acquire("third", "lade")
    assert registry.stats().evictions == {"lru": 2}


def test_the_trackers_of_unloaded_versions_are_dropped_and_saved_so(tmp_path):
    registry = StreamRegistry(PriorStreamOptions(state_dir=str(tmp_path)))
    stream = updated(registry, "s", version=1)
    updated(registry, "s", version=2)
    registry.retain({"lade": {2}})
    assert sorted(stream.versions) == [2]
    assert '"versions":{"2"' in (tmp_path / "s.json").read_text()
    registry.retain({})  # the model left the config
    assert stream.versions == {} and registry.stats().evictions["version_unloaded"] == 2


def test_a_state_saved_with_other_settings_starts_fresh_and_is_reported(tmp_path, caplog):
    saved = StreamRegistry(PriorStreamOptions(state_dir=str(tmp_path), tracker="history"))
    updated(saved, "s")
    registry = StreamRegistry(PriorStreamOptions(state_dir=str(tmp_path)))
    registry.start({"lade": {1}})
    with caplog.at_level(logging.ERROR, logger="serving"):
        stream = updated(registry, "s")
    assert stream.versions[1].updates == 1  # fresh, then this update
    assert "its saved state cannot be restored (it was saved with {'tracker': 'history'" in (
        caplog.text
    )
    assert registry.stats().state_errors == 1
