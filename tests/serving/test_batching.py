"""serving.batching: TF Serving's batching parameters file and the request batcher (no TF)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import (
    Batcher,
    BatchingOptions,
    batchable,
    parse_batching_parameters,
    read_batching_parameters_file,
)
from serving.errors import ServingError, invalid_argument
from tests.serving.serving_support import REPO_ROOT


def test_shipped_batching_config_parses():
    options = read_batching_parameters_file(str(REPO_ROOT / "serving" / "batching.config"))
    assert options == BatchingOptions(
        max_batch_size=32, batch_timeout_micros=2000, max_enqueued_batches=64, num_batch_threads=2
    )


def test_text_proto_fields_and_errors():
    options = parse_batching_parameters(
        "max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8\n"
        "pad_variable_length_inputs: true thread_pool_name { value: 'x' } # comment\n"
        "enable_large_batch_splitting { value: true }"
    )
    assert options.allowed_batch_sizes == (4, 8) and options.enable_large_batch_splitting
    assert options.batch_timeout_micros == 0  # TF Serving's default when omitted
    for text, message in [
        ("max_batch_sizes { value: 8 }", "not a text BatchingParameters"),
        ("max_batch_size { value: 0 }", "max_batch_size = 0"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "last entry"),
        ("batch_timeout_micros { value: -1 }", "expected >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_batching_parameters(text)


class RecordingModel:
    """A fake signature: doubles `x`, fails a batch holding a negative value, records sizes."""

    def __init__(self, delay: float = 0.02):
        self.batch_sizes: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, inputs):
        with self.lock:
            self.batch_sizes.append(len(inputs["x"]))
        time.sleep(self.delay)
        if np.any(inputs["x"] < 0):
            raise invalid_argument("x has negative entries")
        return {"y": inputs["x"] * 2.0, "n": np.arange(len(inputs["x"]))}


def run_requests(model, options, requests, batchers: list | None = None):
    async def main():
        with ThreadPoolExecutor(2) as executor:
            threads = asyncio.Semaphore(options.num_batch_threads)
            batcher = Batcher(model, options, executor, threads, idle_seconds=0.5)
            if batchers is not None:
                batchers.append(batcher)
            return await asyncio.gather(
                *(batcher.submit(r) for r in requests), return_exceptions=True
            )

    return asyncio.run(main())


def test_batch_level_signatures_are_not_batchable():
    assert not batchable("estimate_prior")  # EM over the whole batch: one prior for all rows
    for name in ("serving_default", "predict_uniform", "predict_encoded", "class_info"):
        assert batchable(name)


def test_counters_count_requests_and_the_batches_they_formed():
    model = RecordingModel(delay=0.0)
    # A batch closes only when full (the timeout is far off): 4 requests of 2 rows, 1 batch.
    options = BatchingOptions(
        max_batch_size=8, batch_timeout_micros=30_000_000, num_batch_threads=1
    )
    batchers = []
    results = run_requests(model, options, [{"x": np.ones((2, 2))} for _ in range(4)], batchers)
    assert all(isinstance(r, dict) for r in results)
    assert (batchers[0].requests, batchers[0].batches) == (4, 1) and model.batch_sizes == [8]


def test_concurrent_requests_are_merged_and_split_back():
    model = RecordingModel()
    options = BatchingOptions(max_batch_size=16, batch_timeout_micros=20000, num_batch_threads=1)
    requests = [{"x": np.full((1 + i % 3, 2), float(i))} for i in range(24)]
    results = run_requests(model, options, requests)
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result["y"], request["x"] * 2.0)
    assert sum(model.batch_sizes) == sum(len(r["x"]) for r in requests)
    assert len(model.batch_sizes) < len(requests) and max(model.batch_sizes) <= 16


def test_a_bad_request_does_not_fail_its_batch_neighbours():
    model = RecordingModel()
    options = BatchingOptions(max_batch_size=16, batch_timeout_micros=50000, num_batch_threads=1)
    requests = [{"x": np.ones((2, 2))}, {"x": -np.ones((1, 2))}, {"x": np.full((3, 2), 5.0)}]
    good, bad, other = run_requests(model, options, requests)
    np.testing.assert_array_equal(good["y"], np.full((2, 2), 2.0))
    np.testing.assert_array_equal(other["y"], np.full((3, 2), 10.0))
    assert isinstance(bad, ServingError) and "negative" in bad.message


def test_padding_to_allowed_batch_sizes():
    model = RecordingModel(delay=0.0)
    options = BatchingOptions(
        max_batch_size=8, allowed_batch_sizes=(4, 8), batch_timeout_micros=0, num_batch_threads=1
    )
    (result,) = run_requests(model, options, [{"x": np.arange(6.0).reshape(3, 2)}])
    assert model.batch_sizes == [4]
    np.testing.assert_array_equal(result["n"], [0, 1, 2])


def test_requests_batching_refuses_like_tf_serving():
    model = RecordingModel(delay=0.0)
    options = BatchingOptions(max_batch_size=4, max_enqueued_batches=1, num_batch_threads=1)
    too_big, unequal, scalar = run_requests(
        model,
        options,
        [
            {"x": np.ones((5, 2))},
            {"x": np.ones((2, 2)), "z": np.ones((3, 2))},
            {"x": np.float64(1)},
        ],
    )
    assert "Task size 5 is larger than maximum input batch size 4" in too_big.message
    assert "equal 0th-dimension size" in unequal.message
    assert "at least one dimension" in scalar.message
    split = BatchingOptions(max_batch_size=4, enable_large_batch_splitting=True)
    (result,) = run_requests(model, split, [{"x": np.ones((5, 2))}])
    assert result["y"].shape == (5, 2)


def test_a_full_queue_is_unavailable():
    model = RecordingModel(delay=0.2)
    options = BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    results = run_requests(model, options, [{"x": np.ones((2, 2))} for _ in range(4)])
    errors = [r for r in results if isinstance(r, ServingError)]
    assert errors and all(e.code == "UNAVAILABLE" and e.http_status == 503 for e in errors)
    assert any(isinstance(r, dict) for r in results)
