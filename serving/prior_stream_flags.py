"""The --enable_prior_streams and --prior_stream_* flags of `python -m serving.server` (this
server's extension of TF Serving's predict API, `serving.prior_streams`), and their translation
into `PriorStreamOptions`. Spelled like the TF Serving flags of `serving.flags`: underscores or
hyphens, booleans as `--flag`, `--flag=true|false`.
"""

from __future__ import annotations

import argparse

from serving.flag_values import StartupError, bool_flag, integer_flag
from serving.prior_stream_registry import WHEN_FULL, PriorStreamOptions
from serving.prior_streams import STREAM_HEADER
from serving.storage import is_remote


def add_prior_stream_flags(parser: argparse.ArgumentParser) -> None:
    """The --prior_stream_* flags (this server's extension; TF Serving has none of them)."""
    from serving.tracked_prior import TRACKER_KINDS

    group = parser.add_argument_group(
        "prior streams (this server's extension of TF Serving's predict API)",
        f"A predict request naming a stream (HTTP header {STREAM_HEADER}: NAME; gRPC metadata "
        f"{STREAM_HEADER.lower()}) may omit target_prior: the server predicts with the prior it "
        "tracks for that stream from the stream's earlier requests and the request's own "
        "images, and updates it (lade_tf.prior_tracking). State per model version: GET and "
        "DELETE /v1/models/<model>[/versions/<v>]/prior_streams/<stream>.",
    )
    defaults = PriorStreamOptions()

    def flag(name: str, **kwargs) -> None:
        group.add_argument(f"--{name.replace('_', '-')}", f"--{name}", **kwargs)

    flag(
        "enable_prior_streams",
        type=bool_flag,
        nargs="?",
        const=True,
        default=False,
        help="follow prior streams (off by default: a request naming one is refused)",
    )
    flag(
        "prior_stream_tracker",
        choices=TRACKER_KINDS,
        default=defaults.tracker,
        help=f"the tracker of each stream (default {defaults.tracker}: exponential forgetting, "
        "measured the best with the batch prior in benchmarks/results/online_prior.md)",
    )
    flag(
        "prior_stream_tracker_options",
        default="",
        metavar="NAME=VALUE,...",
        help="the tracker's options (default: the library's), e.g. half_life=100 (forgetting), "
        "window=200 (window), max_experts=100,local=soft_bbse (flh_ftl, which needs "
        "max_experts: its state grows with every request otherwise)",
    )
    flag(
        "prior_stream_batch_prior",
        type=bool_flag,
        nargs="?",
        const=True,
        default=defaults.batch_prior,
        help="predict each request with MAP-EM on its own images centred on the tracked prior "
        "(default true, measured better); false: the tracked prior alone",
    )
    flag(
        "prior_stream_max_streams",
        metavar="N",
        type=integer_flag(1),
        default=defaults.max_streams,
        help=f"most streams held, over all models (default {defaults.max_streams}); a new "
        "stream beyond it evicts the least recently used stream with no update in progress "
        "(its tracker and state file are dropped: it starts afresh if it comes back), or is "
        "refused, see --prior_stream_when_full; memory and state files stay bounded by it",
    )
    flag(
        "prior_stream_when_full",
        choices=WHEN_FULL,
        default=defaults.when_full,
        help="a new stream when --prior_stream_max_streams are held: evict (default) or refuse "
        "it (HTTP 429 / RESOURCE_EXHAUSTED); with evict, only a new stream arriving while every "
        "held stream has an update in progress is refused",
    )
    flag(
        "prior_stream_state_dir",
        default="",
        metavar="DIR",
        help="a local directory where every stream is saved (one JSON file each, written "
        "atomically) and read back at start-up, so streams survive a restart; a file that "
        "cannot be read is logged, moved aside and its stream starts fresh (default: none, "
        "streams live in memory)",
    )
    flag(
        "prior_stream_save_interval_ms",
        metavar="MS",
        type=integer_flag(0),
        default=round(defaults.save_interval_seconds * 1000),
        help="0 (default): a request's update is saved before it is answered, so a killed "
        "server loses no answered update; N > 0: saved in the background every N ms (less "
        "latency; up to N ms of updates can be lost)",
    )
    flag(
        "prior_stream_metrics_max_streams",
        metavar="N",
        type=integer_flag(0),
        default=defaults.metrics_max_streams,
        help="streams with their own Prometheus series (tracked prior per class, updates): the "
        f"N most updated (default {defaults.metrics_max_streams}; 0: none), so the series stay "
        "at most N x (classes + 1) whatever the number of streams",
    )


def prior_streams_from_args(args: argparse.Namespace) -> PriorStreamOptions | None:
    """PriorStreamOptions from --enable_prior_streams and --prior_stream_* (None: off).

    The tracker and its options are checked by making one (this imports lade_tf.prior_tracking,
    NumPy only, and only when streams are on).

    Raises:
        StartupError: a --prior_stream_* flag without --enable_prior_streams, bad tracker
            options, FLH-FTL without max_experts, or a state directory that cannot be written.
    """
    from serving.tracked_prior import parse_tracker_options

    defaults = PriorStreamOptions()
    if not args.enable_prior_streams:
        given = [
            name
            for name in ("prior_stream_tracker_options", "prior_stream_state_dir")
            if getattr(args, name)
        ] + [
            name
            for name, default in (
                ("prior_stream_tracker", defaults.tracker),
                ("prior_stream_batch_prior", defaults.batch_prior),
                ("prior_stream_max_streams", defaults.max_streams),
                ("prior_stream_when_full", defaults.when_full),
                ("prior_stream_save_interval_ms", 0),
                ("prior_stream_metrics_max_streams", defaults.metrics_max_streams),
            )
            if getattr(args, name) != default
        ]
        if given:
            raise StartupError(f"--{given[0]}: prior streams are off; add --enable_prior_streams")
        return None
    flag = f"--prior_stream_tracker_options {args.prior_stream_tracker_options}"
    try:
        tracker_options = parse_tracker_options(args.prior_stream_tracker_options)
    except ValueError as error:
        raise StartupError(f"{flag}: {error}") from None
    if args.prior_stream_tracker == "flh_ftl" and tracker_options.get("max_experts") is None:
        raise StartupError(
            "--prior_stream_tracker flh_ftl: give max_experts=K in --prior_stream_tracker_options "
            "(FLH-FTL keeps every local estimate otherwise, so a stream's state would grow with "
            "every request)"
        )
    _check_tracker(args.prior_stream_tracker, tracker_options, flag)
    state_dir = args.prior_stream_state_dir or None
    if state_dir is not None:
        from serving.prior_stream_store import StateStore

        if is_remote(state_dir):
            raise StartupError(
                f"--prior_stream_state_dir {state_dir}: expected a local directory (state files "
                "are replaced by an atomic rename)"
            )
        try:
            state_dir = StateStore(state_dir).directory
        except ValueError as error:
            raise StartupError(f"--prior_stream_state_dir {state_dir}: {error}") from None
    return PriorStreamOptions(
        tracker=args.prior_stream_tracker,
        tracker_options=tuple(sorted(tracker_options.items())),
        batch_prior=args.prior_stream_batch_prior,
        max_streams=args.prior_stream_max_streams,
        when_full=args.prior_stream_when_full,
        state_dir=state_dir,
        save_interval_seconds=args.prior_stream_save_interval_ms / 1000,
        metrics_max_streams=args.prior_stream_metrics_max_streams,
    )


def _check_tracker(kind: str, options: dict, flag: str) -> None:
    """Makes a tracker of `kind` with `options` for two classes, or StartupError."""
    import numpy as np

    from serving.tracked_prior import TrackerConstants, make_tracker

    half = np.full(2, 0.5)
    constants = TrackerConstants(half, half, 10.0, np.eye(2) / 2, ("0", "1"))
    try:
        make_tracker(kind, constants, options)
    except ValueError as error:
        raise StartupError(f"{flag}: {error}") from None
