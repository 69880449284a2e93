"""A TF-Serving-compatible model server for SavedModels: REST and gRPC, for machines without
TF Serving.

    python -m serving.server --model-base-path DIR --model-name NAME \
        --port 8500 --rest_api_port 8501
    python -m serving.server --model-config-file serving/models.config \
        --enable-batching --batching-parameters-file serving/batching.config \
        --monitoring_config_file serving/monitoring.config

Speaks TF Serving's REST API (tensorflow_serving/g3doc/api_rest.md) on --rest_api_port (default
8501; 0: off): `POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`, `GET
/v1/models/{name}[/versions/{v}|/labels/{l}]` (model status) and `GET .../metadata` (signature
defs), with TF Serving's request and response JSON, `{"error": ...}` bodies and HTTP codes; and
its gRPC API on --port (default 8500): tensorflow.serving.PredictionService (Predict,
GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest). Both share one
inference path (serving/inference.py). Serves the highest loaded version and polls the base paths
(local, or any TensorFlow file system: gs://, s3://, ...) for new versions (no restart;
--file-system-poll-wait-seconds 0 loads what is there at start-up and never polls again, as in TF
Serving). Built on aiohttp and grpc.aio on one event loop; inference runs in a thread pool, never
on the event loop. Binds 127.0.0.1 unless --host says otherwise. Every TF Serving flag is accepted
in its underscore spelling (see serving/flags.py for those with nothing to do here).

With --enable_prior_streams (this server's extension, off by default), a predict request that
names a stream in the `Lade-Prior-Stream` header (gRPC metadata `lade-prior-stream`) may omit
target_prior: the server tracks each stream's class mix from its requests and predicts with it
(serving/prior_streams.py; --prior_stream_* flags: the tracker, the stream cap with LRU eviction,
a state directory that survives restarts). Only then does it import lade_tf.prior_tracking (NumPy
only), where the tracker math lives.

A version that fails to load is END in the model status with TensorFlow's error code, and the
newest versions that do load are served instead (at start-up too; a model none of whose versions
loads stops the start-up, exit status 2). Requests are bounded: --max-request-bytes,
--max-request-batch-size (rows per request), --rest-api-header-timeout-seconds and
--rest-api-body-timeout-seconds; a client that leaves before its answer is counted as CANCELLED.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from serving.flag_values import StartupError
from serving.flags import build_parser, model_configs_from_args, options_from_args
from serving.model_manager import ModelManager
from serving.model_server import bind_socket, serve
from serving.monitoring import access_log

VERSION = "lade-serving 0.2 (TF Serving 2.18 APIs)"


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))  # Common Log Format lines as they are
    access_log.addHandler(handler)
    access_log.propagate = False


def _set_tensorflow_threads(args: argparse.Namespace) -> None:
    """TF Serving's parallelism flags (0: TensorFlow's default), before any op runs."""
    import tensorflow as tf

    intra = args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism
    inter = args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m serving.server`; returns the exit status (2: bad input).

    Flags, local files, base paths and both ports are checked before TensorFlow is imported, so
    a bad one is reported at once, as one `error: ...` line. Process settings (TensorFlow's
    environment and threads, logging) are applied here, never on import.
    """
    args = build_parser(__doc__).parse_args(argv)
    if args.version:
        print(f"TensorFlow ModelServer: {VERSION}")
        return 0
    # TensorFlow 2.16 turns its oneDNN kernels on by default only on CPUs with AVX-512 or AMX;
    # on here, every CPU runs the same kernels. TensorFlow reads the variable when it is
    # imported, so it is set before that; an operator's own value wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    _configure_logging()
    try:
        options = options_from_args(args)
        configs = model_configs_from_args(args)
        if options.port:  # reported now, not after the models load; bound for real in `serve`
            bind_socket(options.host, options.port, "--port").close()
        sock = bind_socket(options.host, options.rest_api_port) if options.rest_api_port else None
        import tensorflow  # noqa: F401 - in the main thread, once everything above is checked

        _set_tensorflow_threads(args)
        asyncio.run(serve(ModelManager(configs), options, sock=sock))
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
