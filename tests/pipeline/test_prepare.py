"""pipeline.prepare: the split plan (pure function) and the Beam pipeline end to end on real data
(scikit-learn digits as PNG folders, CIFAR-10 JPEGs, Fashion-MNIST idx files, a TFDS dataset),
with DirectRunner modes, worker counts and Beam's DaskRunner on a local dask.distributed cluster."""

from __future__ import annotations

import collections
import gzip
import io
import logging
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lade_tf.priors import long_tail_counts
from lade_tf.records import parse_dataset, read_class_info, read_split, split_file_pattern
from pipeline.beam_args import beam_pipeline_args
from pipeline.cli import prepare_main as main
from pipeline.prepare import prepare_examples
from pipeline.split_plan import ImageSummary, PrepareConfig, plan_splits

IN_MEMORY = beam_pipeline_args("in_memory")
DIGITS_CONFIG = PrepareConfig(imbalance_ratio=10.0, n_max=100, val_per_class=5, seed=7)


# ---------------------------------------------------------------- helpers


def _write_digits_folder(root: Path, images, labels, test_every: int = 5) -> Path:
    """Digits as grey PNGs: root/{train,test}/digit_<label>/<index>.png (every n-th is test)."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("test" if i % test_every == 0 else "train") / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def _serialized(examples_dir, split: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(split_file_pattern(str(examples_dir), split)))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _decoded(examples_dir, split: str, shape) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(parse_dataset(split_file_pattern(str(examples_dir), split), shape).batch(4096))
    if not pairs:
        return np.zeros((0,) + tuple(shape), np.uint8), np.zeros(0, np.int64)
    images = np.concatenate([p[0].numpy() for p in pairs])
    labels = np.concatenate([p[1].numpy() for p in pairs])
    assert np.all(images == np.round(images))
    return images.astype(np.uint8), labels


def _multiset(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    return collections.Counter((im.tobytes(), int(label)) for im, label in zip(images, labels))


def _no_leftovers(output_dir: Path) -> bool:
    return not [p for p in os.listdir(output_dir.parent) if ".tmp-" in p or ".old-" in p]


# ---------------------------------------------------------------- the plan (no Beam)


def _summaries(labels, test_every: int | None = 5) -> list[ImageSummary]:
    """Summaries of 8x8 grey images; every n-th is a test image (none when test_every is None)."""
    return [
        ImageSummary(
            f"img{i:05d}",
            int(label),
            "test" if test_every and i % test_every == 0 else "train",
            8,
            8,
            1,
        )
        for i, label in enumerate(labels)
    ]


def _keys_by_split(plan) -> dict[str, set]:
    by_split = collections.defaultdict(set)
    for key, assignment in plan.assignments.items():
        by_split[assignment.split].add(key)
    return by_split


def test_plan_follows_long_tail_counts_with_a_balanced_disjoint_val(digits):
    _, labels = digits
    summaries = _summaries(labels)
    plan = plan_splits(
        summaries, [str(d) for d in range(10)], PrepareConfig(imbalance_ratio=10.0, val_per_class=5)
    )
    pool = np.bincount([s.label for s in summaries if s.origin == "train"], minlength=10)
    n_max = int(pool.min()) - 5  # default: the most every class can still supply
    assert plan.info["n_max"] == n_max and plan.info["warnings"] == []
    assert plan.info["counts"]["train"] == long_tail_counts(n_max, 10, 10.0)
    assert plan.info["counts"]["val"] == [5] * 10
    by_split = _keys_by_split(plan)
    label_of = {s.key: s.label for s in summaries}
    for split in ("train", "val", "test"):
        assert (
            np.bincount([label_of[k] for k in by_split[split]], minlength=10).tolist()
            == plan.info["counts"][split]
        )
    assert not by_split["train"] & by_split["val"]
    assert by_split["test"] == {s.key for s in summaries if s.origin == "test"}
    assert (plan.info["height"], plan.info["width"], plan.info["channels"]) == (8, 8, 1)


def test_plan_does_not_depend_on_input_order_but_on_the_seed(digits):
    _, labels = digits
    summaries = _summaries(labels)
    names = [str(d) for d in range(10)]
    plan = plan_splits(summaries, names, DIGITS_CONFIG)
    shuffled = summaries[:]
    random.Random(1).shuffle(shuffled)
    assert plan_splits(shuffled, names, DIGITS_CONFIG).assignments == plan.assignments
    other_seed = plan_splits(
        summaries, names, PrepareConfig(imbalance_ratio=10.0, n_max=100, val_per_class=5, seed=8)
    )
    assert _keys_by_split(other_seed)["train"] != _keys_by_split(plan)["train"]
    assert other_seed.info["counts"] == plan.info["counts"]


def test_plan_caps_a_too_large_n_max_with_a_warning(digits):
    _, labels = digits
    summaries = _summaries(labels)
    plan = plan_splits(
        summaries,
        [str(d) for d in range(10)],
        PrepareConfig(imbalance_ratio=10.0, n_max=1000, val_per_class=5),
    )
    available = np.bincount([s.label for s in summaries if s.origin == "train"], minlength=10) - 5
    # independent reference: the largest n_max whose counts every class can supply
    feasible = [
        n
        for n in range(1, 1001)
        if all(c <= a for c, a in zip(long_tail_counts(n, 10, 10.0), available))
    ]
    assert plan.info["n_max"] == max(feasible) and plan.info["n_max_requested"] == 1000
    [warning] = plan.info["warnings"]
    assert "n_max=1000" in warning and f"capped to n_max={max(feasible)}" in warning


def test_plan_with_a_seeded_class_order_and_the_step_profile(digits):
    _, labels = digits
    config = PrepareConfig(
        imbalance_ratio=5.0,
        n_max=100,
        val_per_class=3,
        seed=4,
        class_order="random",
        profile="step",
    )
    plan = plan_splits(_summaries(labels), [str(d) for d in range(10)], config)
    order = plan.info["frequency_order"]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert order == np.random.default_rng(4).permutation(10).tolist()
    by_rank = long_tail_counts(100, 10, 5.0, "step")
    assert [plan.info["counts"]["train"][label] for label in order] == by_rank


def test_plan_draws_a_seeded_test_fraction_per_class(digits):
    _, labels = digits
    summaries = _summaries(labels, test_every=None)
    plan = plan_splits(
        summaries,
        [str(d) for d in range(10)],
        PrepareConfig(imbalance_ratio=10.0, val_per_class=5, test_fraction=0.25),
    )
    totals = np.bincount(labels, minlength=10)
    assert plan.info["counts"]["test"] == [round(0.25 * n) for n in totals]
    assert plan.info["n_max"] == min(n - round(0.25 * n) for n in totals) - 5
    by_split = _keys_by_split(plan)
    assert not by_split["test"] & (by_split["train"] | by_split["val"])


def test_plan_reproduces_the_standard_fashion_mnist_lt_counts(fashion_mnist_dir):
    from pipeline.idx_source import read_idx

    train = read_idx(str(fashion_mnist_dir / "train-labels-idx1-ubyte.gz"))
    test = read_idx(str(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz"))
    summaries = [
        ImageSummary(f"{origin}/{i:06d}", int(label), origin, 28, 28, 1)
        for origin, labels in (("train", train), ("test", test))
        for i, label in enumerate(labels)
    ]
    plan = plan_splits(
        summaries, [str(d) for d in range(10)], PrepareConfig(n_max=6000, val_per_class=0)
    )
    assert plan.info["counts"]["train"] == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert sum(plan.info["counts"]["train"]) == 14_886
    assert plan.info["counts"]["val"] == [0] * 10 and plan.info["warnings"] == []


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(config=PrepareConfig(val_per_class=200)),
            r"class '0' \(label 0\) has \d+ readable "
            "training images; 200 go to validation",
        ),
        (
            dict(config=PrepareConfig(imbalance_ratio=1000.0, n_max=50, val_per_class=20)),
            "no training image",
        ),
        (dict(config=PrepareConfig(test_fraction=0.2)), "has its own test split"),
        (dict(test_every=None), "no test split: pass --test-fraction"),
        (
            dict(mixed_sizes=True),
            r"different sizes: 8x8 \(1796 images.*\), 9x9 \(1 images, e.g. "
            r"'img00001'\); pass --image-size",
        ),
    ],
)
def test_plan_rejects_what_cannot_be_split(digits, change, message):
    _, labels = digits
    summaries = _summaries(labels, test_every=change.get("test_every", 5))
    if change.get("mixed_sizes"):
        summaries[1] = summaries[1]._replace(height=9, width=9)
    with pytest.raises(ValueError, match=message):
        config = change.get("config", PrepareConfig(val_per_class=20))  # digits: ~180 per class
        plan_splits(summaries, [str(d) for d in range(10)], config)


def test_plan_resizes_to_an_image_size_and_promotes_grey_to_rgb(digits):
    _, labels = digits
    summaries = _summaries(labels)
    summaries[1] = summaries[1]._replace(height=9, width=9, channels=3)
    plan = plan_splits(
        summaries,
        [str(d) for d in range(10)],
        PrepareConfig(imbalance_ratio=10.0, val_per_class=5, image_size=(8, 8)),
    )
    assert (plan.info["height"], plan.info["width"], plan.info["channels"]) == (8, 8, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(imbalance_ratio=0.5), "imbalance_ratio = 0.5: expected a finite number >= 1"),
        (dict(imbalance_ratio=float("nan")), "imbalance_ratio"),
        (dict(n_max=0), "n_max = 0"),
        (dict(profile="linear"), "profile = 'linear'"),
        (dict(val_per_class=-1), "val_per_class = -1"),
        (dict(class_order="alphabetical"), "class_order = 'alphabetical'"),
        (dict(test_fraction=1.0), "test_fraction = 1.0"),
        (dict(image_size=(0, 8)), "image_size"),
    ],
)
def test_config_errors_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**kwargs)


# ---------------------------------------------------------------- the Beam pipeline


@pytest.fixture(scope="module")
def digits_folder(digits, tmp_path_factory) -> Path:
    images, labels = digits
    return _write_digits_folder(tmp_path_factory.mktemp("digits_src") / "digits", images, labels)


@pytest.fixture(scope="module")
def digits_prepared(digits_folder, tmp_path_factory) -> tuple[Path, dict]:
    """The digits folder prepared in memory: IR 10, n_max 100, 5 val per class, seed 7."""
    output = tmp_path_factory.mktemp("digits_out") / "examples"
    info = prepare_examples(
        f"folder:{digits_folder}", str(output), DIGITS_CONFIG, pipeline_args=IN_MEMORY
    )
    return output, info


def test_digits_splits_have_the_planned_counts_and_the_source_pixels(digits, digits_prepared):
    images, labels = digits
    output, info = digits_prepared
    assert sorted(os.listdir(output)) == [
        "Split-test",
        "Split-train",
        "Split-val",
        "class_info.json",
    ]
    assert read_class_info(str(output)) == info
    assert info["class_names"] == [f"digit_{d}" for d in range(10)]
    assert info["counts"]["train"] == long_tail_counts(100, 10, 10.0)
    assert info["counts"]["val"] == [5] * 10
    assert (info["height"], info["width"], info["channels"]) == (8, 8, 1)
    assert (info["profile"], info["imbalance_ratio"], info["seed"]) == ("exp", 10.0, 7)
    assert info["source"].startswith("folder:") and info["num_skipped"] == 0
    is_test = np.arange(len(labels)) % 5 == 0
    source_train = _multiset(images[~is_test], labels[~is_test])
    decoded = {split: _decoded(output, split, (8, 8, 1)) for split in ("train", "val", "test")}
    for split, (split_images, split_labels) in decoded.items():
        assert np.bincount(split_labels, minlength=10).tolist() == info["counts"][split]
    # test: exactly the source's test images, pixels equal
    assert _multiset(*decoded["test"]) == _multiset(images[is_test], labels[is_test])
    # train and val: source training images (pixels equal), disjoint (digits has no duplicates)
    train, val = _multiset(*decoded["train"]), _multiset(*decoded["val"])
    assert not train - source_train and not val - source_train
    assert not set(train) & set(val)
    assert _no_leftovers(output)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_same_splits_with_two_worker_processes(digits_folder, digits_prepared, tmp_path):
    output, _ = digits_prepared
    parallel = tmp_path / "parallel"
    prepare_examples(
        f"folder:{digits_folder}",
        str(parallel),
        DIGITS_CONFIG,
        pipeline_args=beam_pipeline_args("direct", mode="multi_processing", workers=2),
    )
    for split in ("train", "val", "test"):
        assert set(_serialized(parallel, split)) == set(_serialized(output, split))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_on_a_two_worker_dask_cluster_gives_the_direct_runner_splits(
    digits_folder, digits_prepared, tmp_path, capsys
):
    output, info = digits_prepared
    on_dask = tmp_path / "dask"
    status = main(
        [
            "--source",
            f"folder:{digits_folder}",
            "--output-dir",
            str(on_dask),
            "--imbalance-ratio",
            "10",
            "--n-max",
            "100",
            "--val-per-class",
            "5",
            "--data-seed",
            "7",
            "--beam-runner",
            "dask",
            "--dask-workers",
            "2",
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert (
        f"wrote {sum(info['counts']['train'])} train / 50 val / 360 test examples"
        in capsys.readouterr().out
    )
    for split in ("train", "val", "test"):
        assert set(_serialized(on_dask, split)) == set(_serialized(output, split))
    assert read_class_info(str(on_dask))["counts"] == info["counts"]


def test_corrupt_and_unreadable_images_are_skipped_counted_and_named(digits, tmp_path, caplog):
    images, labels = digits
    root = _write_digits_folder(tmp_path / "src", images[:300], labels[:300])
    broken = root / "train" / "digit_3" / "broken.png"
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    broken.write_bytes(png.getvalue()[:40])
    dangling = root / "train" / "digit_5" / "moved.png"
    dangling.symlink_to(tmp_path / "elsewhere.png")
    with caplog.at_level(logging.WARNING, logger="pipeline.prepare"):
        info = prepare_examples(
            f"folder:{root}",
            str(tmp_path / "out"),
            PrepareConfig(imbalance_ratio=2.0, val_per_class=2),
            pipeline_args=IN_MEMORY,
        )
    assert info["num_skipped"] == 2
    assert [s["path"] for s in info["skipped_files"]] == [str(broken), str(dangling)]
    assert "dangling symbolic link" in info["skipped_files"][1]["reason"]
    for path in (broken, dangling):
        assert any(str(path) in r.getMessage() for r in caplog.records)
    pool = np.bincount(labels[:300][np.arange(300) % 5 != 0], minlength=10)
    assert info["n_max"] == pool.min() - 2


def test_no_validation_split_still_writes_a_readable_empty_val(digits, tmp_path):
    images, labels = digits
    root = _write_digits_folder(tmp_path / "src", images[:400], labels[:400])
    output = tmp_path / "out"
    info = prepare_examples(
        f"folder:{root}",
        str(output),
        PrepareConfig(imbalance_ratio=4.0, val_per_class=0),
        pipeline_args=IN_MEMORY,
    )
    assert info["counts"]["val"] == [0] * 10
    assert os.listdir(output / "Split-val") == ["data_tfrecord-00000-of-00001.gz"]
    assert _serialized(output, "val") == []
    assert len(_serialized(output, "train")) == sum(info["counts"]["train"])


def test_a_too_large_n_max_is_capped_with_a_logged_warning(digits_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.prepare"):
        info = prepare_examples(
            f"folder:{digits_folder}",
            str(tmp_path / "out"),
            PrepareConfig(imbalance_ratio=1.0, n_max=10_000, val_per_class=5),
            pipeline_args=IN_MEMORY,
        )
    pool = collections.Counter(p.parent.name for p in (digits_folder / "train").rglob("*.png"))
    assert info["n_max"] == min(pool.values()) - 5
    assert info["counts"]["train"] == [info["n_max"]] * 10
    assert any("capped to n_max" in r.getMessage() for r in caplog.records)


def test_a_failed_preparation_leaves_nothing_that_looks_complete(digits_folder, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="go to validation"):
        prepare_examples(
            f"folder:{digits_folder}",
            str(output),
            PrepareConfig(val_per_class=500),
            pipeline_args=IN_MEMORY,
        )
    assert not output.exists() and _no_leftovers(output)
    output.mkdir()
    (output / "keep.txt").write_text("someone else's file")
    with pytest.raises(ValueError, match="exists and is not empty"):
        prepare_examples(f"folder:{digits_folder}", str(output), pipeline_args=IN_MEMORY)
    assert os.listdir(output) == ["keep.txt"]


def test_mixed_grey_and_rgb_become_rgb_and_single_trees_use_a_test_fraction(digits, tmp_path):
    images, labels = digits
    root = tmp_path / "mixed"
    for i in range(200):
        folder = root / f"digit_{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = images[i] if i % 2 else np.dstack([images[i]] * 3)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    info = prepare_examples(
        f"folder:{root}",
        str(tmp_path / "out"),
        PrepareConfig(imbalance_ratio=2.0, val_per_class=1, test_fraction=0.2),
        pipeline_args=IN_MEMORY,
    )
    assert info["channels"] == 3
    totals = np.bincount(labels[:200], minlength=10)
    assert info["counts"]["test"] == [round(0.2 * n) for n in totals]
    decoded = np.concatenate(
        [_decoded(tmp_path / "out", s, (8, 8, 3))[0] for s in ("train", "val", "test")]
    )
    assert np.array_equal(decoded[..., 0], decoded[..., 1])
    source = {im.tobytes() for im in images[:200]}
    assert all(im[..., 0].tobytes() in source for im in decoded)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--imbalance-ratio", "0.5"], "imbalance_ratio = 0.5"),
        (["--source", "folder:/no/such/dir"], "does not exist"),
        (["--image-size", "big"], "image_size = 'big'"),
        (["--source", "tfds:no_such_dataset_xyz"], "unknown TFDS dataset 'no_such_dataset_xyz'"),
        (["--dask-workers", "2"], "need --beam-runner dask"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(argv, message, tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cifar_jpegs_are_stored_byte_for_byte(cifar10_dir, tmp_path):
    root = tmp_path / "cifar_small"
    for origin, count in (("train", 60), ("test", 10)):
        for name in ("airplane", "bird", "cat"):
            (root / origin / name).mkdir(parents=True)
            for jpg in sorted(os.listdir(cifar10_dir / origin / name))[:count]:
                shutil.copy(cifar10_dir / origin / name / jpg, root / origin / name / jpg)
    output = tmp_path / "out"
    info = prepare_examples(
        f"folder:{root}",
        str(output),
        PrepareConfig(imbalance_ratio=10.0, val_per_class=10),
        pipeline_args=IN_MEMORY,
    )
    assert info["class_names"] == ["airplane", "bird", "cat"]
    assert (info["height"], info["width"], info["channels"]) == (32, 32, 3)
    assert info["counts"]["train"] == long_tail_counts(50, 3, 10.0)
    import tensorflow as tf

    stored = collections.Counter()
    for split in ("train", "val", "test"):
        for record in _serialized(output, split):
            stored[
                tf.train.Example.FromString(record).features.feature["image"].bytes_list.value[0]
            ] += 1
    files = {p.read_bytes() for p in root.rglob("*.jpg")}
    assert set(stored) <= files and sum(stored.values()) == sum(map(sum, info["counts"].values()))
    test_files = {p.read_bytes() for p in (root / "test").rglob("*.jpg")}
    assert test_files <= set(stored)


def _reference_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = struct.unpack(f">{raw[3]}I", raw[4 : 4 + 4 * raw[3]])
    return np.frombuffer(raw[4 + 4 * raw[3] :], np.uint8).reshape(dims)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fashion_mnist_with_the_default_counts(fashion_mnist_dir, tmp_path):
    """The default preparation of the full Fashion-MNIST: n_max 5800 (6000 - 200 val), IR 100."""
    output = tmp_path / "fmnist"
    info = prepare_examples("fashion_mnist", str(output), pipeline_args=IN_MEMORY)
    assert info["n_max"] == 5800
    assert info["counts"]["train"] == long_tail_counts(5800, 10, 100.0)
    assert sum(info["counts"]["train"]) == 14_392
    assert info["counts"]["val"] == [200] * 10 and info["counts"]["test"] == [1000] * 10
    train_images = _reference_idx(fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    train_labels = _reference_idx(fashion_mnist_dir / "train-labels-idx1-ubyte.gz")
    test_images = _reference_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    test_labels = _reference_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert _multiset(*_decoded(output, "test", (28, 28, 1))) == _multiset(
        test_images[..., None], test_labels
    )
    source_train = _multiset(train_images[..., None], train_labels)
    train = _multiset(*_decoded(output, "train", (28, 28, 1)))
    val = _multiset(*_decoded(output, "val", (28, 28, 1)))
    assert not train - source_train and not val - source_train
    # Fashion-MNIST has a few duplicate images: disjoint means no source image used twice
    assert not (train + val) - source_train


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tfds_dataset_is_read_through_tfds(digits, tmp_path):
    import tensorflow_datasets as tfds

    images, labels = digits
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=[f"d{d}" for d in range(10)]),
        }
    )
    split = {"train": range(0, 600), "test": range(600, 800)}
    tfds.dataset_builders.store_as_tfds_dataset(
        name="digits_for_lade_test",
        version="1.0.0",
        features=features,
        data_dir=str(tmp_path),
        disable_shuffling=True,
        split_datasets={
            name: [
                (str(i), {"image": images[i][..., None], "label": int(labels[i])}) for i in indices
            ]
            for name, indices in split.items()
        },
    )
    output = tmp_path / "out"
    info = prepare_examples(
        "tfds:digits_for_lade_test",
        str(output),
        PrepareConfig(imbalance_ratio=5.0, val_per_class=3),
        pipeline_args=IN_MEMORY,
        tfds_data_dir=str(tmp_path),
    )
    assert info["class_names"] == [f"d{d}" for d in range(10)]
    pool = np.bincount(labels[:600], minlength=10)
    assert info["counts"]["train"] == long_tail_counts(int(pool.min()) - 3, 10, 5.0)
    assert _multiset(*_decoded(output, "test", (8, 8, 1))) == _multiset(
        images[600:800, ..., None], labels[600:800]
    )
    assert not _multiset(*_decoded(output, "train", (8, 8, 1))) - _multiset(
        images[:600, ..., None], labels[:600]
    )


# ---------------------------------------------------------------- runner selection


def test_runner_names_map_to_beam_flags_without_prism():
    from pipeline.beam_args import DASK_RUNNER, choose_direct_mode

    direct = beam_pipeline_args("direct", mode="multi_processing", workers=3)
    assert direct[:3] == [
        "--runner=FnApiRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=3",
    ]
    requirements = direct[3].split("=", 1)[1]
    assert direct[3].startswith("--requirements_file=") and os.path.getsize(requirements) == 0
    assert beam_pipeline_args("fnapi", mode="in_memory", workers=3)[:3] == [
        "--runner=FnApiRunner",
        "--direct_running_mode=in_memory",
        "--direct_num_workers=1",
    ]
    assert IN_MEMORY[:3] == beam_pipeline_args("fnapi", mode="in_memory")[:3]
    dask = beam_pipeline_args(
        "dask", workers=2, dask_address="tcp://10.0.0.5:8786", extra=["--dask_npartitions=3"]
    )
    assert dask[0] == f"--runner={DASK_RUNNER}"
    assert "--dask_client_address=tcp://10.0.0.5:8786" in dask
    assert dask[-1] == "--dask_npartitions=3"  # extra flags come last and win
    assert beam_pipeline_args("flink", extra=["--flink_master=h:8081"]) == [
        "--runner=FlinkRunner",
        "--flink_master=h:8081",
    ]
    assert beam_pipeline_args("spark")[0] == "--runner=SparkRunner"
    assert beam_pipeline_args("dataflow")[0] == "--runner=DataflowRunner"
    with pytest.raises(ValueError, match="runner = 'prism'"):
        beam_pipeline_args("prism")
    with pytest.raises(ValueError, match="mode = 'threads'"):
        beam_pipeline_args("direct", mode="threads")
    assert choose_direct_mode(70_000, cpu_count=2) == "in_memory"
    assert choose_direct_mode(10**6, cpu_count=2) == "in_memory"
    assert choose_direct_mode(10**6, cpu_count=16) == "multi_processing"
    assert choose_direct_mode(1_797, cpu_count=16) == "in_memory"


def test_direct_runner_args_never_start_prism(caplog):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    with caplog.at_level(logging.INFO):
        with beam.Pipeline(options=PipelineOptions(beam_pipeline_args("in_memory"))) as p:
            _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)
    assert not [r for r in caplog.records if "prism" in r.getMessage().lower()]


def _tf_arrays(examples: Path, split: str, shape: tuple[int, int, int]):
    rows = list(parse_dataset(split_file_pattern(str(examples), split), shape).as_numpy_iterator())
    return np.stack([image for image, _ in rows]), np.array([label for _, label in rows])


def test_read_split_without_tensorflow_reads_what_parse_dataset_reads(
    digits_prepared, tmp_path_factory
):
    """PNG (digits) and JPEG bytes kept from the CIFAR-10 files: the same pixels, labels, order.
    JPEG is where decoders differ: both sides use the accurate integer DCT."""
    from tests.conftest import extract_cifar10_subset

    root = tmp_path_factory.mktemp("cifar_subset")
    cifar = root / "examples"
    tree = extract_cifar10_subset(root, 100)
    prepare_examples(
        f"folder:{tree}",
        str(cifar),
        PrepareConfig(imbalance_ratio=10.0, val_per_class=10),
        pipeline_args=IN_MEMORY,
    )
    for examples, shape in ((digits_prepared[0], (8, 8, 1)), (cifar, (32, 32, 3))):
        for split in ("train", "test"):
            images, labels = read_split(str(examples), split)
            tf_images, tf_labels = _tf_arrays(examples, split, shape)
            np.testing.assert_array_equal(labels, tf_labels)
            np.testing.assert_array_equal(images.astype(np.float32), tf_images)
    assert read_class_info(str(cifar))["source"].startswith("folder:")
