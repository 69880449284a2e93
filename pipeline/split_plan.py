"""The long-tailed split plan: which image goes to train, val or test, and in which shard.

Pure Python (no Beam, no TensorFlow): `plan_splits` sees only a summary of every image (key,
label, origin, shape). Per class it ranks the images by a hash of (seed, purpose, image key): the
first `val_per_class` go to val, the next n_k = `long_tail_counts(...)[rank of the class]` to
train. The result depends only on the set of images, never on their order or on the number of
workers that read them. `pipeline.prepare` runs it inside its Beam graph.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from lade_tf.priors import PROFILES, long_tail_counts
from lade_tf.records import SPLITS

CLASS_ORDERS = ("label", "random")
EXAMPLES_PER_SHARD = 5000


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How the splits are drawn.

    Args:
        imbalance_ratio: IR = n_max / n_min of the training split (>= 1; 1 = balanced).
        n_max: training images of the most frequent class; None = the largest count every class
            can still supply after validation. A larger value is capped with a warning.
        profile: "exp" or "step" (see `lade_tf.priors.long_tail_counts`).
        val_per_class: balanced validation images per class, taken first (>= 0).
        seed: seeds every selection (and the class order when `class_order="random"`).
        class_order: "label" (label 0 most frequent) or "random" (a seeded permutation).
        test_fraction: for sources without a test split, the fraction of each class held out as
            test (0 < f < 1); must be None when the source has a test split.
        image_size: (height, width) to resize every image to; None requires one common size.
    """

    imbalance_ratio: float = 100.0
    n_max: int | None = None
    profile: str = "exp"
    val_per_class: int = 200
    seed: int = 0
    class_order: str = "label"
    test_fraction: float | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        if not math.isfinite(self.imbalance_ratio) or self.imbalance_ratio < 1:
            raise ValueError(
                f"imbalance_ratio = {self.imbalance_ratio!r}: expected a finite "
                "number >= 1 (n_max / n_min; 1 gives a balanced training split)"
            )
        if self.n_max is not None and (not isinstance(self.n_max, int) or self.n_max < 1):
            raise ValueError(f"n_max = {self.n_max!r}: expected an integer >= 1 or None")
        if self.profile not in PROFILES:
            raise ValueError(f"profile = {self.profile!r}: expected one of {PROFILES}")
        if not isinstance(self.val_per_class, int) or self.val_per_class < 0:
            raise ValueError(f"val_per_class = {self.val_per_class!r}: expected an integer >= 0")
        if self.class_order not in CLASS_ORDERS:
            raise ValueError(f"class_order = {self.class_order!r}: expected one of {CLASS_ORDERS}")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction = {self.test_fraction!r}: expected 0 < f < 1")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size = {self.image_size!r}: expected (height, width) >= 1")


class ImageSummary(NamedTuple):
    """What planning needs to know about one image (no pixels)."""

    key: str
    label: int
    origin: str
    height: int
    width: int
    channels: int


class Assignment(NamedTuple):
    """Where one image goes: split, shard file and position in it, and the target shape."""

    split: str
    shard: int
    num_shards: int
    position: int
    height: int
    width: int
    channels: int


@dataclasses.dataclass
class SplitPlan:
    """Per-image assignments plus the `class_info.json` content; `info["error"]` set on failure."""

    assignments: dict[str, Assignment]
    info: dict


def _rank(seed: int, purpose: str, key: str) -> tuple[int, str]:
    """Sort key of an image for one random choice; depends only on (seed, purpose, key)."""
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), key


def _frequency_order(num_classes: int, config: PrepareConfig) -> list[int]:
    """Labels from most to least frequent in train."""
    if config.class_order == "label":
        return list(range(num_classes))
    return np.random.default_rng(config.seed).permutation(num_classes).tolist()


def _choose_n_max(
    available: list[int], order: list[int], class_names: Sequence[str], config: PrepareConfig
) -> tuple[int, list[str]]:
    """n_max to use (default, requested, or capped) and the warnings about capping."""
    if config.n_max is None:
        return min(available), []

    def shortfall(n_max: int) -> tuple[int, int] | None:
        wanted = long_tail_counts(n_max, len(order), config.imbalance_ratio, config.profile)
        for rank, label in enumerate(order):
            if wanted[rank] > available[label]:
                return label, wanted[rank]
        return None

    short = shortfall(config.n_max)
    if short is None:
        return config.n_max, []
    low, high = 1, config.n_max  # shortfall(low) is None (every class supplies 1), high fails
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if shortfall(middle) is None else (low, middle)
    label, wanted = short
    warning = (
        f"n_max={config.n_max} needs {wanted} training images of class "
        f"{class_names[label]!r} (label {label}), which has {available[label]} left after "
        f"{config.val_per_class} validation images; capped to n_max={low}"
    )
    return low, [warning]


def _size_error(sizes: dict[tuple[int, int], list[str]]) -> str:
    listing = ", ".join(
        f"{h}x{w} ({len(keys)} images, e.g. {sorted(keys)[0]!r})"
        for (h, w), keys in sorted(sizes.items(), key=lambda kv: -len(kv[1]))
    )
    return f"images have different sizes: {listing}; pass --image-size HxW to resize them"


def plan_splits(
    summaries: Iterable[ImageSummary], class_names: Sequence[str], config: PrepareConfig
) -> SplitPlan:
    """Assigns every image to train, val, test or nothing; the result ignores input order.

    Per class (label c, rank k in the frequency order): images of the train pool sorted by
    hash(seed, key); the first `val_per_class` -> val, the next
    `long_tail_counts(n_max, C, IR, profile)[k]` -> train, the rest unused. Test images (the
    source's test split, or a seeded `test_fraction` of each class drawn first) all -> test.
    Each split is spread over ceil(n / EXAMPLES_PER_SHARD) shards in a seeded order.

    Raises:
        ValueError: a class without readable images or test images, a class with fewer than
            val_per_class + 1 training images, images of different sizes without image_size, a
            test split both in the source and asked for by test_fraction (or in neither), or an
            imbalance ratio that leaves a class without training images.
    """
    num_classes = len(class_names)
    pool = [[] for _ in range(num_classes)]
    test = [[] for _ in range(num_classes)]
    sizes = collections.defaultdict(list)
    channels = 1
    for s in summaries:
        (pool if s.origin == "train" else test)[s.label].append(s.key)
        sizes[(s.height, s.width)].append(s.key)
        channels = max(channels, s.channels)
    for label, name in enumerate(class_names):
        if not pool[label] and not test[label]:
            raise ValueError(f"class {name!r} (label {label}) has no readable image")

    has_test = any(test)
    if config.test_fraction is not None:
        if has_test:
            raise ValueError(
                f"test_fraction = {config.test_fraction}: the source has its own "
                "test split; --test-fraction is only for a single class tree"
            )
        for label, name in enumerate(class_names):
            ranked = sorted(pool[label], key=lambda k: _rank(config.seed, "test", k))
            n_test = round(config.test_fraction * len(ranked))
            if not 1 <= n_test < len(ranked):
                raise ValueError(
                    f"test_fraction = {config.test_fraction}: class {name!r} has "
                    f"{len(ranked)} images, giving {n_test} test images"
                )
            test[label], pool[label] = ranked[:n_test], ranked[n_test:]
    elif not has_test:
        raise ValueError("the source has no test split: pass --test-fraction (e.g. 0.2)")
    for label, name in enumerate(class_names):
        if not test[label]:
            raise ValueError(f"class {name!r} (label {label}) has no readable test image")

    if config.image_size is not None:
        height, width = config.image_size
    elif len(sizes) > 1:
        raise ValueError(_size_error(sizes))
    else:
        ((height, width),) = sizes

    val_per_class = config.val_per_class
    for label, name in enumerate(class_names):
        if len(pool[label]) <= val_per_class:
            raise ValueError(
                f"class {name!r} (label {label}) has {len(pool[label])} readable training images; "
                f"{val_per_class} go to validation and at least 1 must remain for training "
                "(lower --val-per-class)"
            )
    available = [len(keys) - val_per_class for keys in pool]
    order = _frequency_order(num_classes, config)
    n_max, warnings = _choose_n_max(available, order, class_names, config)
    by_rank = long_tail_counts(n_max, num_classes, config.imbalance_ratio, config.profile)
    train_counts = [0] * num_classes
    for rank, label in enumerate(order):
        train_counts[label] = by_rank[rank]
    if min(train_counts) < 1:
        label = train_counts.index(0)
        raise ValueError(
            f"imbalance_ratio = {config.imbalance_ratio} with n_max = {n_max} leaves "
            f"class {class_names[label]!r} (label {label}) no training image; "
            "lower the imbalance ratio"
        )

    split_keys = {split: [] for split in SPLITS}
    label_of = {}
    for label in range(num_classes):
        ranked = sorted(pool[label], key=lambda k: _rank(config.seed, "split", k))
        chosen = {
            "val": ranked[:val_per_class],
            "train": ranked[val_per_class : val_per_class + train_counts[label]],
            "test": test[label],
        }
        for split, keys in chosen.items():
            split_keys[split] += keys
            label_of.update((k, label) for k in keys)

    assignments, counts, num_shards = {}, {}, {}
    for split, keys in split_keys.items():
        num_shards[split] = max(1, math.ceil(len(keys) / EXAMPLES_PER_SHARD))
        for i, key in enumerate(sorted(keys, key=lambda k: _rank(config.seed, "order", k))):
            assignments[key] = Assignment(
                split,
                i % num_shards[split],
                num_shards[split],
                i // num_shards[split],
                height,
                width,
                channels,
            )
        counts[split] = np.bincount([label_of[k] for k in keys], minlength=num_classes).tolist()
    info = {
        "class_names": list(class_names),
        "counts": counts,
        "height": height,
        "width": width,
        "channels": channels,
        "profile": config.profile,
        "imbalance_ratio": config.imbalance_ratio,
        "n_max": n_max,
        "n_max_requested": config.n_max,
        "val_per_class": val_per_class,
        "seed": config.seed,
        "class_order": config.class_order,
        "frequency_order": order,
        "test_fraction": config.test_fraction,
        "image_size": list(config.image_size) if config.image_size else None,
        "num_shards": num_shards,
        "warnings": warnings,
        "error": None,
    }
    return SplitPlan(assignments, info)


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """ "32x32" -> (32, 32); None or "" -> None.

    Raises:
        ValueError: if the text is not HEIGHTxWIDTH.
    """
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image_size = {text!r}: expected HEIGHTxWIDTH, e.g. 32x32") from None
    return height, width
