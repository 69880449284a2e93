"""Bad input to `python -m pipeline.prepare` and `python pipeline/run.py`, run as real processes.

Each bad input ends in one `error: ...` line that names the value and what was expected, exit
status 2, no traceback and nothing left at the output directory; an unreadable image file inside a
folder source is skipped and counted instead, like a corrupt one. The processes run concurrently
(each pays TensorFlow's and Beam's imports).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, require_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PREPARE = [sys.executable, "-m", "pipeline.prepare"]
RUN = [sys.executable, "pipeline/run.py"]
#: pipeline.prepare's CLI with the Debian Fashion-MNIST directory replaced by the first argument.
PREPARE_WITHOUT_DEBIAN_FILES = [
    sys.executable,
    "-c",
    "import sys; import pipeline.sources as sources; "
    "sources.FASHION_MNIST_DIR = sys.argv.pop(1); from pipeline.cli import prepare_main as main; "
    "sys.exit(main())",
]
PROCESS_SECONDS = 600


def _offline_prefix() -> list[str] | None:
    """A command prefix that runs a process without network access; None if there is none."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    ):
        return ["unshare", "--net"]
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
    except OSError:
        return []  # this machine is offline already
    return None


def _unwritable_dir() -> str | None:
    """A directory in which even root cannot create entries (sysfs), or None."""
    try:
        os.rmdir(tempfile.mkdtemp(dir="/sys"))
    except OSError:
        return "/sys"
    return None


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _idx_dir(root: Path, images: np.ndarray, labels: np.ndarray, damage: str) -> Path:
    """Gzip idx files of 200 train / 50 test digits, the train images file damaged."""
    root.mkdir()
    for prefix, part in (("train", slice(0, 200)), ("t10k", slice(200, 250))):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[part])
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels[part])
    path = root / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return root


def _folder_with_unreadable_files(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i in range(300):
        folder = root / ("test" if i % 5 == 0 else "train") / f"digit_{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    (root / "train" / "digit_4" / "moved.png").symlink_to(root / "nowhere.png")
    os.mkfifo(root / "train" / "digit_6" / "pipe.jpg")
    return root


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory) -> dict:
    """{case: (CompletedProcess, output dir)} of every case below, run concurrently."""
    images, labels = digits
    root = tmp_path_factory.mktemp("cli_bad_input")
    a_file = root / "a_file"
    a_file.write_text("not a directory")
    truncated = _idx_dir(root / "idx_truncated", images, labels, "truncated")
    corrupt = _idx_dir(root / "idx_corrupt", images, labels, "flipped byte")
    folder = _folder_with_unreadable_files(root / "folder", images, labels)
    tfds_dir = root / "empty_tfds"
    unwritable = _unwritable_dir()
    offline = _offline_prefix()
    out = {
        name: root / f"out_{name}"
        for name in (
            "truncated_idx",
            "corrupt_idx",
            "tfds_offline",
            "fashion_mnist_fallback_offline",
            "negative_dask_workers",
            "unreadable_images",
            "run_truncated_idx",
        )
    }
    cases = {
        "parent_is_a_file": PREPARE + ["--output-dir", str(a_file / "out")],
        "truncated_idx": PREPARE
        + ["--source", f"idx:{truncated}", "--output-dir", str(out["truncated_idx"])],
        "corrupt_idx": PREPARE
        + ["--source", f"idx:{corrupt}", "--output-dir", str(out["corrupt_idx"])],
        "negative_dask_workers": PREPARE
        + [
            "--beam-runner",
            "dask",
            "--dask-workers",
            "-1",
            "--output-dir",
            str(out["negative_dask_workers"]),
        ],
        "unreadable_images": PREPARE
        + [
            "--source",
            f"folder:{folder}",
            "--imbalance-ratio",
            "2",
            "--val-per-class",
            "2",
            "--beam-mode",
            "in_memory",
            "--output-dir",
            str(out["unreadable_images"]),
        ],
        "run_truncated_idx": RUN
        + ["--source", f"idx:{truncated}", "--output-dir", str(out["run_truncated_idx"])],
    }
    if unwritable:
        cases["parent_not_writable"] = PREPARE + ["--output-dir", f"{unwritable}/lade_out"]
        cases["run_output_not_writable"] = RUN + ["--output-dir", f"{unwritable}/lade_out"]
    if offline is not None:
        cases["tfds_offline"] = (
            offline
            + PREPARE
            + [
                "--source",
                "tfds:mnist",
                "--tfds-data-dir",
                str(tfds_dir),
                "--output-dir",
                str(out["tfds_offline"]),
            ]
        )
        cases["fashion_mnist_fallback_offline"] = (
            offline
            + PREPARE_WITHOUT_DEBIAN_FILES
            + [
                str(root / "no_debian_files"),
                "--tfds-data-dir",
                str(tfds_dir),
                "--output-dir",
                str(out["fashion_mnist_fallback_offline"]),
            ]
        )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=PROCESS_SECONDS
        )

    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(cases, pool.map(run, cases.values())))
    return {name: (result, out.get(name)) for name, result in results.items()}


def _error_line(runs: dict, case: str) -> str:
    """The one `error: ...` line of a failed run, after checking exit status 2, no traceback
    and no output directory."""
    if case not in runs:
        require_or_skip(
            f"{case}: not possible on this machine (no unwritable directory, or "
            "network access without `unshare --net`)"
        )
    result, output_dir = runs[case]
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr[-4000:]
    assert output_dir is None or not output_dir.exists()
    return lines[-1]


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "parent_not_writable",
            "error: output_dir = '/sys/lade_out': cannot create anything in '/sys' (",
        ),
        ("parent_is_a_file", "/a_file' is a file, not a directory"),
        (
            "truncated_idx",
            "train-images-idx3-ubyte.gz' is corrupt or truncated (Compressed file "
            "ended before the end-of-stream marker was reached); replace it",
        ),
        ("corrupt_idx", "train-images-idx3-ubyte.gz' is corrupt or truncated ("),
        ("negative_dask_workers", "error: argument --dask-workers: '-1': expected an integer >= 1"),
        ("tfds_offline", "error: source 'tfds:mnist': TFDS dataset 'mnist' is not prepared in "),
        (
            "fashion_mnist_fallback_offline",
            "/no_debian_files has no Fashion-MNIST files, and TFDS "
            "dataset 'fashion_mnist' is not prepared in ",
        ),
        (
            "run_output_not_writable",
            "error: --output-dir = '/sys/lade_out': cannot create anything in '/sys' (",
        ),
        (
            "run_truncated_idx",
            "train-images-idx3-ubyte.gz' is corrupt or truncated (Compressed file ended",
        ),
    ],
)
def test_bad_input_is_one_error_line_with_exit_status_2(runs, case, expected):
    assert expected in _error_line(runs, case)


@pytest.mark.parametrize("case", ["tfds_offline", "fashion_mnist_fallback_offline"])
def test_an_unavailable_tfds_source_says_how_to_get_it(runs, case):
    line = _error_line(runs, case)
    assert "cannot be downloaded: " in line and "cannot be reached (offline?)" in line
    assert "download_and_prepare()" in line and "--tfds-data-dir DIR" in line
    if case == "fashion_mnist_fallback_offline":
        assert "install Debian's copy with `apt-get install dataset-fashion-mnist`" in line


def test_unreadable_images_in_a_folder_are_skipped_and_counted(runs):
    result, output_dir = runs["unreadable_images"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert ", 2 skipped)" in result.stdout
    info = json.loads((output_dir / "class_info.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in info["skipped_files"]}
    assert reasons == {
        "moved.png": "cannot be read: dangling symbolic link to "
        f"{str(output_dir.parent / 'folder' / 'nowhere.png')!r}",
        "pipe.jpg": "cannot be read: not a regular file",
    }
    for name in reasons:
        assert name in result.stderr  # each is named in a warning
