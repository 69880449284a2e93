"""What every benchmark script shares: where it runs from, what it ran on, how it writes results.

A benchmark runs as a script (`.venv/bin/python benchmarks/NAME.py`), so its own folder is first
on sys.path and `import harness` finds this module. Importing it also puts the repository root
on sys.path, so that the script imports `lade_tf` and `pipeline` from this checkout whether or
not they are installed; it changes nothing else in the process (TensorFlow settings are made by
each script's `main`, through `lade_tf.process_settings`).

Results are written the same way by every benchmark: JSON atomically (an interrupted run never
leaves half a file that a later merge would read), NumPy arrays atomically and compressed (a
trained model's validation and test logits in one format, `write_logits` / `read_logits`, so
that estimation benchmarks rerun from them without training), Markdown tables from rows of
cells, and matplotlib figures drawn off-screen (Agg) and saved at one resolution.
`machine_description` records what the numbers were measured on beside them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lade_tf.priors import SHIFT_NAMES  # noqa: E402  (needs the checkout on sys.path)

__all__ = [
    "CIFAR10_TARBALL",
    "LAST_LAYER_ARRAYS",
    "LOGIT_ARRAYS",
    "REPO_ROOT",
    "RESULTS_DIR",
    "SHARED_DATA",
    "SHIFT_NAMES",
    "extracted_cifar10",
    "last_layer_arrays",
    "machine_description",
    "markdown_table",
    "progress_logger",
    "pyplot",
    "read_logits",
    "save_figure",
    "write_json",
    "write_logits",
    "write_npz",
]

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
#: Data shared between checkouts (the CIFAR-10 JPEG tarball); LADE_SHARED_DATA overrides it.
SHARED_DATA = Path(os.environ.get("LADE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CIFAR10_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.xz"
FIGURE_DPI = 120


def progress_logger(name: str) -> Callable[[str], None]:
    """A `log(message)` that prints `[name HH:MM:SS] message` on stderr (stdout stays for the
    tables and for worker protocols)."""

    def log(message: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        return ""


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_description(*, gpus: bool = False) -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was when this was called.

    Args:
        gpus: also list TensorFlow's GPUs (imports TensorFlow; leave False in a process that
            must not load it, such as a benchmark's orchestrator).

    Returns:
        cpu (model name), cores, platform, python, tensorflow and keras (installed versions,
        None when absent, read without importing them), load_average (1, 5 and 15 minutes) and,
        with `gpus`, gpus (device names).
    """
    description: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _installed_version("tensorflow"),
        "keras": _installed_version("keras"),
        "load_average": list(os.getloadavg()),
    }
    if gpus:
        import tensorflow as tf

        description["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    return description


# --------------------------------------------------------------------------- data


def extracted_cifar10(tarball: Path, work_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The CIFAR-10 JPEG folder (`train/`, `test/`) extracted from `tarball` into `work_dir`
    once and reused; `folder:<path>` of it is a `pipeline.prepare` source.

    Raises:
        SystemExit: when the tarball is missing (say where it is expected and how to point at it).
    """
    tree = work_dir / "cifar10-jpeg"
    if not (tree / "test").is_dir():
        if not tarball.exists():
            raise SystemExit(
                f"error: {tarball} not found: expected the shared CIFAR-10 JPEG tarball "
                "(set LADE_SHARED_DATA or pass its path)"
            )
        log(f"extracting {tarball} to {work_dir}")
        work_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xJf", str(tarball), "-C", str(work_dir)], check=True)
    return tree


# --------------------------------------------------------------------------- writing results


def _replace_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Calls `write(binary file)` on a temporary file beside `path`, then renames it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named per process (not mkstemp, whose 0600 mode the rename would keep).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, *, indent: int = 1, allow_nan: bool = True) -> None:
    """Writes `value` as JSON (and a final newline) atomically.

    Args:
        allow_nan: write NaN and Infinity as JavaScript does (Python's json reads them back);
            False raises ValueError on them, for files that strict JSON readers must parse.
    """
    text = json.dumps(value, indent=indent, allow_nan=allow_nan) + "\n"
    _replace_atomically(path, lambda f: f.write(text.encode()))


def write_npz(path: Path, **arrays: Any) -> None:
    """Writes `arrays` to a compressed .npz file atomically (`numpy.load(path)` reads them)."""
    import numpy as np

    _replace_atomically(path, lambda f: np.savez_compressed(f, **arrays))


#: The arrays of a logits file besides `counts` (see `write_logits`).
LOGIT_ARRAYS = ("val_logits", "val_labels", "test_logits", "test_labels")
#: Optional arrays of a logits file: the inputs of the model's last Dense layer (its features,
#: float16) and that layer's kernel and bias, what UOGD adapts (`lade_tf.online_gradient`).
LAST_LAYER_ARRAYS = ("val_features", "test_features", "kernel", "bias")


def write_logits(
    path: Path,
    *,
    val_logits: Any,
    val_labels: Any,
    test_logits: Any,
    test_labels: Any,
    counts: Sequence[int],
    val_per_class: int,
    last_layer: dict[str, Any] | None = None,
) -> None:
    """Writes one trained model's outputs, the input of every benchmark that scores or estimates
    without training, atomically as a compressed .npz.

    Args:
        val_logits, test_logits: raw logits float32 [N, C] of the validation and test splits.
        val_labels, test_labels: their labels, int64 [N].
        counts: the training split's images per class [C] (the source prior's counts).
        val_per_class: balanced validation images per class the data were prepared with.
        last_layer: optionally the arrays of LAST_LAYER_ARRAYS (`last_layer_arrays`); the
            features are stored as float16 (a few MB less per model; UOGD reads the same values
            in every benchmark).
    """
    import numpy as np

    extra = {}
    for key, value in (last_layer or {}).items():
        if key not in LAST_LAYER_ARRAYS:
            raise ValueError(f"last_layer key {key!r}: expected {LAST_LAYER_ARRAYS}")
        extra[key] = np.asarray(value, np.float16 if key.endswith("features") else np.float32)
    write_npz(
        path,
        val_logits=np.asarray(val_logits, np.float32),
        val_labels=np.asarray(val_labels, np.int64),
        test_logits=np.asarray(test_logits, np.float32),
        test_labels=np.asarray(test_labels, np.int64),
        counts=np.asarray(counts, np.int64),
        val_per_class=np.int64(val_per_class),
        **extra,
    )


def last_layer_arrays(model: Any, val_inputs: Any, test_inputs: Any) -> dict[str, Any]:
    """The inputs of a `lade_tf.models` network's last Dense layer ("logits") on the validation
    and test inputs (arrays or tf.data batches), and that layer's kernel [d, C] and bias [C]."""
    import keras
    import numpy as np

    dense = model.get_layer("logits")
    features = keras.Model(model.inputs, dense.input)
    kernel, bias = (np.asarray(w) for w in dense.get_weights())
    return {
        "val_features": features.predict(val_inputs, verbose=0),
        "test_features": features.predict(test_inputs, verbose=0),
        "kernel": kernel,
        "bias": bias,
    }


def read_logits(path: Path) -> dict[str, Any]:
    """What `write_logits` wrote: the arrays of `LOGIT_ARRAYS` (and of LAST_LAYER_ARRAYS where
    they were written, features as float32), `counts` as a list of ints and `val_per_class` as
    an int."""
    import numpy as np

    with np.load(path) as arrays:
        outputs: dict[str, Any] = {key: arrays[key] for key in LOGIT_ARRAYS}
        for key in LAST_LAYER_ARRAYS:
            if key in arrays.files:
                outputs[key] = arrays[key].astype(np.float32)
        outputs["counts"] = [int(n) for n in arrays["counts"]]
        outputs["val_per_class"] = int(arrays["val_per_class"])
    return outputs


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> list[str]:
    """A Markdown table as lines: header, alignment row, one line per row of cells.

    Args:
        headers: column titles.
        rows: cells, already formatted (anything `str` turns into text).
        align: one letter per column, "l" (left, the default) or "r" (right, for numbers).
    """
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r}: expected one letter per column ({len(headers)})")
    separators = {"l": "---", "r": "---:"}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(separators[a] for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def pyplot():
    """`matplotlib.pyplot` on the off-screen Agg backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    """Lays out, saves (PNG at the benchmarks' resolution) and closes a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
