"""Client for a served LADE model, through TF Serving's standard REST or gRPC API only.

Works against `serving.server` and against real TF Serving. As a library (the clients themselves
are `serving.rest_client.ServingClient` and `serving.grpc_client.GrpcServingClient`):

    client = ServingClient("http://127.0.0.1:8501", "lade")  # or GrpcServingClient("host:8500")
    prior = resolve_prior("source", client)         # or "uniform", [..], "prior.json"
    outputs = client.predict_images(images, prior)  # images float [B, H, W, C] 0..255
    estimated = client.estimate_prior(images)       # p_t unknown: estimated from the batch

As a command (image files are sent as PNG/JPEG bytes to `predict_encoded`, `.npy` arrays of raw
pixels, [H, W, C] or [B, H, W, C] (grey: also [H, W] or [B, H, W]), to `serving_default`; one
prior for all of them):

    python -m serving.client --url http://127.0.0.1:8501 --model-name lade \
        --prior uniform --top-k 3 digit.png batch.npy
    python -m serving.client --grpc 127.0.0.1:8500 --model-name lade --prior source digit.png

`--grpc` sends the same requests (status, metadata, Predict with the target prior input,
`estimate_prior`) over TF Serving's gRPC PredictionService instead of REST.

With `--track-prior` the prior follows the traffic (`serving.prior_tracking_client`): each input
(an image file, or a .npy batch) is one request, in the order given, predicted with the prior a
tracker keeps here from the inputs before it and the input's own images; the tracker's state
is read from and saved to `--tracker-state FILE`, so consecutive commands continue one stream.
Works against any TF Serving. `--prior-stream NAME` asks the embedded server to keep the tracker
instead (a request per input, naming the stream; `serving.prior_streams`).

    python -m serving.client --model-name lade --track-prior --tracker-state shop.json a.png b.npy
    python -m serving.client --model-name lade --prior-stream shop-42 a.png b.npy

With `--prior estimate` the target prior is unknown: all inputs go, as one batch of raw pixels, to
the `estimate_prior` signature (image files are decoded here with Pillow and resized to the model's
input), which estimates p_t from the batch (calibrated EM, docs/design.md section 7); the client
prints that estimate next to the predictions made under it. Send a batch from one deployment: the
estimate is about the batch as a whole (one image gives about the training prior).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

from serving.grpc_client import GrpcServingClient
from serving.prior_tracking_client import PriorTrackingClient
from serving.rest_client import ServingClient, ServingRequestError
from serving.tracked_prior import DEFAULT_TRACKER, TRACKER_KINDS, parse_tracker_options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def _read_metadata_file(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "assets", "lade_metadata.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def resolve_prior(
    spec: str | Sequence[float], client: ServingClient, *, metadata_file: str | None = None
) -> np.ndarray:
    """The target prior [C] a prior argument names.

    Args:
        spec: "uniform"; "source" (the training prior, from the served `class_info` signature,
            or from `metadata_file` when given); a JSON file holding a list or
            {"target_prior": [...]}; a JSON list or comma-separated numbers; or a sequence.
        client: used for the number of classes and the source prior.
        metadata_file: the model's `assets/lade_metadata.json` (or its SavedModel directory).

    Returns:
        float64 [C] non-negative weights (the model normalises them).

    Raises:
        ValueError: unreadable spec, wrong length, negative / non-finite / all-zero weights.
    """
    if isinstance(spec, str):
        if spec == "uniform":
            count = client.num_classes()
            return np.full(count, 1.0 / count)
        if spec == "source":
            if metadata_file:
                return np.asarray(_read_metadata_file(metadata_file)["source_prior"], np.float64)
            return client.class_info()["source_prior"]
        if os.path.isfile(spec):
            with open(spec, encoding="utf-8") as handle:
                loaded = json.load(handle)
            values = loaded["target_prior"] if isinstance(loaded, dict) else loaded
        else:
            try:
                values = (
                    json.loads(spec)
                    if spec.lstrip().startswith("[")
                    else [float(part) for part in spec.split(",")]
                )
            except ValueError:
                raise ValueError(
                    f"prior {spec!r}: expected uniform, source, a JSON file, a JSON "
                    "list or comma-separated numbers"
                ) from None
    else:
        values = spec
    prior = np.asarray(values, dtype=np.float64)
    count = client.num_classes()
    if prior.shape != (count,):
        raise ValueError(f"prior has shape {prior.shape}: expected {count} class weights")
    if not np.all(np.isfinite(prior)) or np.any(prior < 0) or prior.sum() <= 0:
        raise ValueError(
            f"prior {prior.tolist()}: expected finite, non-negative weights with a positive sum"
        )
    return prior


def top_k(probabilities: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """The k most probable (class_id, probability) pairs of each row, most probable first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(row[c])) for c in ids] for row, ids in zip(probabilities, order)]


def _load_array(path: str, image_shape: Sequence[int]) -> np.ndarray:
    """A .npy file as a batch [B, H, W, C] for a model whose input is `image_shape` (H, W, C)."""
    array = np.load(path)
    height, width, channels = image_shape
    if array.shape == (height, width, channels):
        array = array[None]
    elif channels == 1 and array.shape[-2:] == (height, width) and array.ndim in (2, 3):
        array = array.reshape(-1, height, width, 1)  # grey image(s) without a channel axis
    if array.ndim != 4 or array.shape[1:] != (height, width, channels):
        raise ValueError(
            f"{path}: array of shape {array.shape}, expected raw pixels shaped "
            f"[{height}, {width}, {channels}] or [B, {height}, {width}, {channels}]"
            + (f" (or [{height}, {width}], [B, {height}, {width}])" if channels == 1 else "")
        )
    return array.astype(np.float32)


def _decode_image_file(path: str, image_shape: Sequence[int]) -> np.ndarray:
    """An image file as raw pixels [H, W, C] float32 at the model's input size and channels."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = image_shape
    if channels not in (1, 3):
        raise ValueError(
            f"model input has {channels} channels: image files can be decoded for "
            "1 (grey) or 3 (RGB); send .npy arrays instead"
        )
    try:
        with Image.open(path) as picture:
            picture = picture.convert("L" if channels == 1 else "RGB")
            if picture.size != (width, height):
                picture = picture.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(picture, dtype=np.float32)
    except UnidentifiedImageError:
        raise ValueError(
            f"{path}: not a readable image (expected {', '.join(IMAGE_SUFFIXES)})"
        ) from None
    return pixels.reshape(height, width, channels)


def _split_inputs(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    images = [p for p in paths if p.lower().endswith(IMAGE_SUFFIXES)]
    arrays = [p for p in paths if p.lower().endswith(".npy")]
    unknown = sorted(set(paths) - set(images) - set(arrays))
    if unknown:
        raise ValueError(
            f"unsupported inputs {unknown}: expected image files "
            f"({', '.join(IMAGE_SUFFIXES)}) or .npy arrays"
        )
    return images, arrays


def estimate_files(
    client: ServingClient, paths: Sequence[str]
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """(estimated target prior [C], (label, probabilities [C]) per input image in input order):
    every input in one `estimate_prior` request."""
    _split_inputs(paths)
    image_shape = client.input_shapes("estimate_prior")["images"][1:]
    labels, batches = [], []
    for path in paths:
        if path.lower().endswith(".npy"):
            array = _load_array(path, image_shape)
            labels += [path] if len(array) == 1 else [f"{path}[{i}]" for i in range(len(array))]
        else:
            array = _decode_image_file(path, image_shape)[None]
            labels.append(path)
        batches.append(array)
    outputs = client.estimate_prior(np.concatenate(batches))
    return outputs["target_prior"], list(zip(labels, outputs["probabilities"]))


def predict_files(
    client: ServingClient, paths: Sequence[str], prior: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """(label, probabilities [C]) per input image, in input order; one request per kind."""
    images, arrays = _split_inputs(paths)
    results: dict[str, list[tuple[str, np.ndarray]]] = {}
    if images:
        encoded = []
        for path in images:
            with open(path, "rb") as handle:
                encoded.append(handle.read())
        probabilities = client.predict_encoded(encoded, prior)["probabilities"]
        for path, row in zip(images, probabilities):
            results[path] = [(path, row)]
    if arrays:
        image_shape = client.input_shapes()["images"][1:]
        loaded = [_load_array(path, image_shape) for path in arrays]
        probabilities = client.predict_images(np.concatenate(loaded), prior)["probabilities"]
        start = 0
        for path, array in zip(arrays, loaded):
            rows = probabilities[start : start + len(array)]
            start += len(array)
            results[path] = [
                (path if len(array) == 1 else f"{path}[{i}]", row) for i, row in enumerate(rows)
            ]
    return [entry for path in paths for entry in results[path]]


def predict_files_in_turn(
    predictor: ServingClient | PriorTrackingClient, paths: Sequence[str]
) -> list[tuple[str, np.ndarray]]:
    """(label, probabilities [C]) per input image, in input order: one request per input (an
    image file, or a .npy batch), in turn, so that each is predicted after the ones before.

    Args:
        predictor: a `PriorTrackingClient`, or a client with a `prior_stream` (its
            `predict_images` / `predict_encoded` take no prior).
        paths: image files and .npy arrays.
    """
    _split_inputs(paths)
    client = predictor.client if isinstance(predictor, PriorTrackingClient) else predictor
    results: list[tuple[str, np.ndarray]] = []
    for path in paths:
        if path.lower().endswith(".npy"):
            array = _load_array(path, client.input_shapes()["images"][1:])
            rows = predictor.predict_images(array)["probabilities"]
            labels = [path] if len(array) == 1 else [f"{path}[{i}]" for i in range(len(array))]
        else:
            with open(path, "rb") as handle:
                rows = predictor.predict_encoded([handle.read()])["probabilities"]
            labels = [path]
        results += list(zip(labels, rows))
    return results


def _add_tracking_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a prior that follows the traffic")
    way = group.add_mutually_exclusive_group()
    way.add_argument(
        "--track-prior",
        action="store_true",
        help="keep a tracker of the prior here (any TF Serving): each input is one request, "
        "predicted with the prior tracked from the inputs before it and its own images",
    )
    way.add_argument(
        "--prior-stream",
        metavar="NAME",
        help="name a prior stream the embedded server tracks (one request per input)",
    )
    group.add_argument(
        "--tracker-state",
        metavar="FILE",
        help="with --track-prior: read the tracker from FILE if it exists, save it there after",
    )
    group.add_argument("--tracker", choices=TRACKER_KINDS, default=DEFAULT_TRACKER)
    group.add_argument(
        "--tracker-options", default="", metavar="NAME=VALUE,...", help="e.g. half_life=100"
    )
    group.add_argument(
        "--no-batch-prior",
        action="store_true",
        help="predict with the tracked prior alone, not MAP-EM on each input's own images",
    )


def _tracked_predictions(args: argparse.Namespace, client: ServingClient):
    """(results, the tracked prior after them or None) for --track-prior / --prior-stream."""
    if args.prior_stream:
        client.prior_stream = args.prior_stream
        return predict_files_in_turn(client, args.inputs), None
    settings = {
        "tracker": args.tracker,
        "tracker_options": parse_tracker_options(args.tracker_options),
        "batch_prior": not args.no_batch_prior,
    }
    if args.tracker_state:
        tracking = PriorTrackingClient.load(client, args.tracker_state, **settings)
    else:
        tracking = PriorTrackingClient(client, **settings)
    results = predict_files_in_turn(tracking, args.inputs)
    if args.tracker_state:
        tracking.save(args.tracker_state)
    return results, tracking.prior


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m serving.client`."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or .npy arrays")
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="server root URL (REST)")
    parser.add_argument(
        "--grpc",
        nargs="?",
        const="127.0.0.1:8500",
        metavar="HOST:PORT",
        help="use TF Serving's gRPC API at HOST:PORT (default 127.0.0.1:8500) instead of REST",
    )
    parser.add_argument("--model-name", default="lade")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--version", type=int, help="model version (default: latest)")
    group.add_argument("--label", help="model version label")
    parser.add_argument(
        "--prior",
        default="uniform",
        help="uniform | source | estimate (estimated from the inputs by the "
        "estimate_prior signature) | prior.json | '[w0, w1, ...]' | "
        "'w0,w1,...'",
    )
    parser.add_argument(
        "--metadata-file",
        help="assets/lade_metadata.json (or the SavedModel "
        "directory) for --prior source without the class_info signature",
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--timeout", type=float, default=30.0)
    _add_tracking_flags(parser)
    args = parser.parse_args(argv)
    if args.tracker_state and not args.track_prior:
        parser.error("--tracker-state needs --track-prior")
    kind, target = (GrpcServingClient, args.grpc) if args.grpc else (ServingClient, args.url)
    client = kind(
        target, args.model_name, version=args.version, label=args.label, timeout=args.timeout
    )
    estimated = None
    try:
        if args.track_prior or args.prior_stream:
            results, estimated = _tracked_predictions(args, client)
            num_classes = len(results[0][1])
        elif args.prior == "estimate":
            estimated, results = estimate_files(client, args.inputs)
            num_classes = len(estimated)
        else:
            prior = resolve_prior(args.prior, client, metadata_file=args.metadata_file)
            num_classes = len(prior)
        try:
            names = [str(n) for n in client.class_info()["class_names"]]
        except (ServingRequestError, ValueError, KeyError):
            names = [str(c) for c in range(num_classes)]
        if not (args.track_prior or args.prior_stream or args.prior == "estimate"):
            results = predict_files(client, args.inputs, prior)
    except (ServingRequestError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    k = max(1, min(args.top_k, num_classes))
    rows = [(label, top_k(probabilities[None], k)[0]) for label, probabilities in results]
    predictions = [
        {
            "input": label,
            "top_k": [{"class_id": c, "class_name": names[c], "probability": p} for c, p in best],
        }
        for label, best in rows
    ]
    if args.json:
        if estimated is None:
            print(json.dumps(predictions, indent=2))
        else:
            print(
                json.dumps(
                    {
                        "target_prior": [
                            {"class_id": c, "class_name": names[c], "prior": float(p)}
                            for c, p in enumerate(estimated)
                        ],
                        "predictions": predictions,
                    },
                    indent=2,
                )
            )
        return 0
    if estimated is not None:
        shown = ", ".join(f"{names[c]} ({c}) {p:.4f}" for c, p in enumerate(estimated))
        what = "tracked prior after" if args.track_prior else "estimated target prior"
        print(f"{what} ({len(results)} images): {shown}")
    for label, best in rows:
        ranked = ", ".join(f"{names[c]} ({c}) {p:.4f}" for c, p in best)
        print(f"{label}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
