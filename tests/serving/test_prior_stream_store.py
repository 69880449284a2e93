"""serving.prior_stream_store: state files written atomically and read back, bad ones reported and
moved aside, the cap applied at start-up (real files in a temporary directory)."""

from __future__ import annotations

import json
import os

import pytest

from serving.prior_stream_registry import STREAM_NAME
from serving.prior_stream_store import (
    STATE_FORMAT,
    StateStore,
    parse_state_document,
    state_document,
)

pytestmark = pytest.mark.timeout(60)
ENTRY = {"updates": 3, "images": 30, "updated": 1.5, "settings": {}, "tracker": {"kind": "x"}}


def stored(store: StateStore, name: str, mtime: float) -> None:
    store.write(name, state_document(name, "lade", {1: ENTRY}))
    os.utime(store.path(name), (mtime, mtime))


def test_a_state_is_written_whole_and_read_back(tmp_path):
    store = StateStore(str(tmp_path / "new" / "dir"))
    store.write("shop-1", state_document("shop-1", "lade", {2: ENTRY, 1: ENTRY}))
    document = json.loads((tmp_path / "new" / "dir" / "shop-1.json").read_text())
    assert document["format"] == STATE_FORMAT and list(document["versions"]) == ["1", "2"]
    assert [p.name for p in (tmp_path / "new" / "dir").iterdir()] == ["shop-1.json"]
    (saved,), problems = store.read_all(STREAM_NAME.fullmatch, 10)
    assert problems == [] and saved.name == "shop-1" and saved.model == "lade"
    assert saved.versions == {1: ENTRY, 2: ENTRY}
    store.remove("shop-1")
    store.remove("shop-1")  # a missing file is fine
    assert store.read_all(STREAM_NAME.fullmatch, 10) == ([], [])


def test_truncated_and_garbage_files_are_reported_moved_aside_and_skipped(tmp_path):
    store = StateStore(str(tmp_path))
    stored(store, "good", 100)
    stored(store, "cut", 200)
    whole = (tmp_path / "cut.json").read_bytes()
    (tmp_path / "cut.json").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "noise.json").write_bytes(os.urandom(64))
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/1"}))
    (tmp_path / ".left.abc.tmp").write_text("{")  # a write a kill interrupted
    (tmp_path / "not a stream.json").write_text("{}")  # not a stream name: not ours
    saved, problems = store.read_all(STREAM_NAME.fullmatch, 10)
    assert [s.name for s in saved] == ["good"]
    assert len(problems) == 3 and all("unreadable" in p for p in problems)
    text = "\n".join(problems)
    assert "cut.json is unreadable (" in text and "stream 'cut' starts fresh" in text
    assert "not a prior stream state (format 'something/1'" in text
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "cut.json.unreadable",
        "good.json",
        "noise.json.unreadable",
        "not a stream.json",
        "other.json.unreadable",
    ]


def test_more_files_than_the_cap_keep_the_most_recently_saved(tmp_path):
    store = StateStore(str(tmp_path))
    for index in range(5):
        stored(store, f"s{index}", 1000 + index)
    saved, problems = store.read_all(STREAM_NAME.fullmatch, 3)
    assert [s.name for s in saved] == ["s4", "s3", "s2"]
    assert len(problems) == 2 and "more than 3 streams" in problems[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2.json", "s3.json", "s4.json"]


def test_documents_of_another_stream_or_shape_are_refused():
    with pytest.raises(ValueError, match="holds stream 'a', not 'b'"):
        parse_state_document("b", state_document("a", "lade", {}))
    bad = state_document("a", "lade", {1: {"updates": 1}})
    with pytest.raises(ValueError, match="version 1: missing images, settings, tracker"):
        parse_state_document("a", bad)
    with pytest.raises(ValueError, match="not a prior stream state"):
        parse_state_document("a", [1, 2])


def test_a_directory_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot create the directory"):
        StateStore(str(blocker / "state"))
