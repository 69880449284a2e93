"""The --enable_prior_streams and --prior_stream_* flags: both spellings, what --help says about
the cap, and one clear start-up error for every bad combination (parsed in process)."""

from __future__ import annotations

import pytest

from serving.flag_values import StartupError
from serving.flags import build_parser
from serving.prior_stream_flags import prior_streams_from_args
from serving.prior_stream_registry import PriorStreamOptions

pytestmark = pytest.mark.timeout(60)


def parsed(*argv: str) -> PriorStreamOptions | None:
    return prior_streams_from_args(build_parser().parse_args(list(argv)))


def test_help_states_the_cap_its_eviction_and_the_stream_header():
    text = " ".join(build_parser().format_help().split())
    assert "--prior-stream-max-streams N, --prior_stream_max_streams N" in text
    assert "evicts the least recently used stream with no update in progress" in text
    assert "HTTP header Lade-Prior-Stream: NAME; gRPC metadata lade-prior-stream" in text
    assert "memory and state files stay bounded by it" in text


def test_streams_are_off_unless_enabled_and_both_spellings_set_them(tmp_path):
    assert parsed() is None
    options = parsed(
        "--enable-prior-streams",
        "--prior_stream_tracker",
        "window",
        "--prior-stream-tracker-options",
        "window=50",
        "--prior_stream_batch_prior=false",
        "--prior-stream-max-streams",
        "7",
        "--prior_stream_when_full",
        "refuse",
        "--prior-stream-state-dir",
        str(tmp_path / "state"),
        "--prior_stream_save_interval_ms",
        "250",
    )
    assert options == PriorStreamOptions(
        tracker="window",
        tracker_options=(("window", 50),),
        batch_prior=False,
        max_streams=7,
        when_full="refuse",
        state_dir=str(tmp_path / "state"),
        save_interval_seconds=0.25,
    )
    assert (tmp_path / "state").is_dir()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--prior_stream_state_dir", "/tmp/x"],
            "--prior_stream_state_dir: prior streams are off; add --enable_prior_streams",
        ),
        (
            ["--prior_stream_max_streams", "5"],
            "--prior_stream_max_streams: prior streams are off",
        ),
        (
            ["--enable_prior_streams", "--prior_stream_tracker", "flh_ftl"],
            "--prior_stream_tracker flh_ftl: give max_experts=K",
        ),
        (
            ["--enable_prior_streams", "--prior_stream_tracker_options", "window=5"],
            "--prior_stream_tracker_options window=5: tracker 'forgetting' options ['window']",
        ),
        (
            ["--enable_prior_streams", "--prior_stream_tracker_options", "half_life=-1"],
            "--prior_stream_tracker_options half_life=-1: half_life = -1",
        ),
        (
            ["--enable_prior_streams", "--prior_stream_state_dir", "gs://bucket/state"],
            "--prior_stream_state_dir gs://bucket/state: expected a local directory",
        ),
    ],
)
def test_bad_combinations_are_one_startup_error(argv, message):
    with pytest.raises(StartupError) as caught:
        parsed(*argv)
    assert str(caught.value).startswith(message)


def test_flh_ftl_with_a_bound_is_accepted():
    options = parsed(
        "--enable_prior_streams",
        "--prior_stream_tracker",
        "flh_ftl",
        "--prior_stream_tracker_options",
        "max_experts=50,local=batch_em",
    )
    assert options.tracker_options == (("local", "batch_em"), ("max_experts", 50))
