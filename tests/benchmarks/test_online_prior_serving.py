"""benchmarks/online_prior_serving.py: a real smoke run on a small digits model, through real
server processes: every served path predicts every image as the library does, a SIGKILL loses no
answered update, damaged state files are reported, and the stream cap holds."""

from __future__ import annotations

import json

import numpy as np
import online_prior_serving as bench
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """The tracked digits model of the serving tests and its test images, as --model-base-path
    and --images take them."""
    from tests.serving.prior_stream_support import tracked_digits_model

    root = tmp_path_factory.mktemp("online_prior_serving")
    model = tracked_digits_model(digits, root / "lade")
    images = root / "test.npz"
    np.savez(images, images=model["test_x"], labels=model["test_y"])
    return model["base"], images


def test_smoke_run_matches_the_library_and_measures_the_faults(exported, tmp_path, capsys):
    base, images = exported
    arguments = ["--smoke", "--model-base-path", str(base), "--images", str(images)]
    arguments += ["--work-dir", str(tmp_path / "work"), "--output", str(tmp_path)]
    assert bench.main(arguments) == 0
    report = json.loads((tmp_path / "online_prior_serving.json").read_text())
    assert len(report["streams"]) == 8
    assert set(report["streams"]["F50 <-> B50 / square"]) >= set(bench.PATHS)
    for entry in report["streams"].values():
        for path in bench.PATHS:
            if path in entry:
                assert entry[path]["images_differing"] == 0
                assert entry[path]["accuracy"] == entry["library"]
                assert entry[path]["max_prior_difference"] < 1e-5
    latency = report["cost"]["latency"]
    assert set(latency) == {
        f"{kind}, {api}"
        for kind, api in [
            ("plain predict", "REST"),
            ("server stream", "REST"),
            ("client tracker", "REST"),
            ("plain predict", "gRPC"),
            ("server stream", "gRPC"),
        ]
    }
    assert set(report["cost_saving_state"]["latency"]) == set(latency)
    assert report["cost_saving_state"]["server_tracking_mean_ms"] > 0
    (kill,) = report["faults"]["kill"]
    assert kill["lost_updates"] in (0, -1)  # -1: the request in flight was saved, not answered
    assert kill["images_differing_after_restart"] == 0 and kill["restored_prior_gap"] < 1e-6
    for damaged in kill["bad_files"].values():
        assert damaged["log"] and damaged["moved_aside"] and not damaged["held_after_restart"]
        assert damaged["updates_after_one_request"] == 1
    (keys,) = report["faults"]["keys"]
    assert keys["streams_held"] == keys["state_files"] == keys["cap"] == 30
    assert keys["lru_evictions"] >= keys["keys"] - keys["cap"]
    assert (tmp_path / "online_prior_serving.png").stat().st_size > 10_000
    markdown = (tmp_path / "online_prior_serving.md").read_text()
    assert markdown in capsys.readouterr().out.replace("\r", "") + "\n"
