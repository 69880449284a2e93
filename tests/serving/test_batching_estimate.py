"""--enable-batching never merges estimate_prior requests, whose one output covers the whole batch.

`estimate_prior` runs EM over all the images of its call and returns one target prior, so a
batcher merging two clients' requests would answer each with an estimate over both clients'
images. These tests run a real server on 127.0.0.1 whose batching parameters make merging
deterministic (a batch closes only when full: 16 rows, 20 s timeout), send two concurrent
estimate_prior requests of 8 images each (one digit each) and check that each gets the answer it
gets alone, while serving_default requests are still merged (the batchers' counters).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import BATCH_LEVEL_SIGNATURES, BatchingOptions
from tests.serving.serving_support import InProcessServer, http, run_signature

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROWS = 8  # images per estimate_prior request; two of them fill a batch exactly
HTTP_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def full_batch_server(export_base):
    """A batching server (in this process, to read its batchers' counters) whose batches close
    only when they hold 2 * ROWS rows."""
    from serving.model_manager import ModelConfig, ModelManager
    from serving.server_core import ServerOptions

    server = InProcessServer(
        ModelManager([ModelConfig(name="lade", base_path=str(export_base))]),
        ServerOptions(
            timeout_seconds=HTTP_TIMEOUT,
            file_system_poll_wait_seconds=0.0,
            batching=BatchingOptions(
                max_batch_size=2 * ROWS, batch_timeout_micros=20_000_000, num_batch_threads=1
            ),
        ),
    )
    yield server
    server.stop()


def batching_stats(server: InProcessServer) -> dict:
    return server.call_on_loop(server.server.core.batching_stats)


def predict(url: str, images: np.ndarray, signature: str, **inputs) -> dict:
    payload = {
        "signature_name": signature,
        "inputs": {
            "images": images.tolist(),
            **{name: value.tolist() for name, value in inputs.items()},
        },
    }
    status, body = http(f"{url}/v1/models/lade:predict", payload, timeout=HTTP_TIMEOUT)
    assert status == 200, body
    return {name: np.asarray(value) for name, value in body["outputs"].items()}


def concurrently(calls: list) -> list:
    """Runs the callables at once (released together by a barrier); their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(HTTP_TIMEOUT)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def one_digit_batches(digits_split) -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits_split["test_x"], digits_split["test_y"]
    return images[labels == 0][:ROWS], images[labels == 1][:ROWS]


def assert_estimates_equal(got: dict, expected: dict) -> None:
    for name in ("target_prior", "probabilities", "logits"):
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(got["class_ids"], expected["class_ids"])


def test_estimate_prior_is_the_batch_level_signature():
    assert "estimate_prior" in BATCH_LEVEL_SIGNATURES
    assert "serving_default" not in BATCH_LEVEL_SIGNATURES


def test_a_merged_batch_would_change_the_estimates(saved_model, digits_split):
    """The power of the tests below: EM over both requests' images gives another prior."""
    zeros, ones = one_digit_batches(digits_split)
    alone = [run_signature(saved_model, "estimate_prior", images=x) for x in (zeros, ones)]
    merged = run_signature(saved_model, "estimate_prior", images=np.concatenate([zeros, ones]))
    assert [int(np.argmax(a["target_prior"][0])) for a in alone] == [0, 1]
    for estimate in alone:
        assert np.max(np.abs(estimate["target_prior"][0] - merged["target_prior"][0])) > 0.1


def test_concurrent_estimate_prior_requests_are_not_merged(
    full_batch_server, saved_model, digits_split
):
    url = full_batch_server.url
    zeros, ones = one_digit_batches(digits_split)
    before = batching_stats(full_batch_server)
    alone = [predict(url, x, "estimate_prior") for x in (zeros, ones)]
    together = concurrently([lambda x=x: predict(url, x, "estimate_prior") for x in (zeros, ones)])
    for images, single, concurrent in zip((zeros, ones), alone, together):
        assert_estimates_equal(concurrent, single)
        assert_estimates_equal(single, run_signature(saved_model, "estimate_prior", images=images))
    after = batching_stats(full_batch_server)
    assert ("lade", 1, "estimate_prior") not in after
    assert after == before  # no batcher saw these requests


def test_concurrent_serving_default_requests_are_still_merged(
    full_batch_server, saved_model, digits_split
):
    images = digits_split["test_x"]
    requests = 4
    rows = 2 * ROWS // requests  # together exactly one full batch
    jobs = [
        (
            images[i * rows : (i + 1) * rows],
            np.random.default_rng(i).dirichlet(np.ones(10), size=rows).astype(np.float32),
        )
        for i in range(requests)
    ]
    key = ("lade", 1, "serving_default")
    before = batching_stats(full_batch_server).get(key, {"requests": 0, "batches": 0})
    results = concurrently(
        [
            lambda job=job: predict(
                full_batch_server.url, job[0], "serving_default", target_prior=job[1]
            )
            for job in jobs
        ]
    )
    for (batch, priors), served in zip(jobs, results):
        expected = run_signature(saved_model, "serving_default", images=batch, target_prior=priors)
        for name, value in expected.items():
            np.testing.assert_allclose(served[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    after = batching_stats(full_batch_server)[key]
    assert after["requests"] - before["requests"] == requests
    assert after["batches"] - before["batches"] == 1  # all four requests ran as one batch


def test_cli_batching_server_answers_concurrent_estimates_alone(batching_server_url, digits_split):
    """The same through `python -m serving.server --enable-batching` (5 ms batch timeout)."""
    zeros, ones = one_digit_batches(digits_split)
    alone = [predict(batching_server_url, x, "estimate_prior") for x in (zeros, ones)]
    for _ in range(3):
        together = concurrently(
            [lambda x=x: predict(batching_server_url, x, "estimate_prior") for x in (zeros, ones)]
        )
        for single, concurrent in zip(alone, together):
            assert_estimates_equal(concurrent, single)
