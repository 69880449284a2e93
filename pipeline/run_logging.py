"""What `pipeline/run.py` prints: `--log-level` for Python's loggers and for the file descriptor
TensorFlow's C++ side writes to.

`--log-level warning` (the default) keeps TFX, Beam, absl and TensorFlow (its C++ side too) to
warnings and errors, keeps one line per component start / finish / cache hit, Keras's progress
lines and the final summary, and drops a few known-harmless lines (CUDA plug-in registration
on machines without a GPU, TensorRT not found, TFX's MLMD-query notice); `info` prints
everything at INFO. `configure_native_logging` must run before TensorFlow loads (its C++ log
level is read once); `configure_logging` after the flags are parsed.
"""

from __future__ import annotations

import logging as python_logging
import os
import sys
import warnings
from typing import Sequence

#: `--log-level` values, quietest first.
LOG_LEVELS = ("error", "warning", "info", "debug")
#: Lines of TensorFlow's C++ side and of TFX that carry no information for a user of this
#: pipeline, dropped at the warning and error log levels: CUDA plug-ins registering twice on a
#: machine without a GPU, TensorRT not installed, absl's pre-init notice, the end of a tf.data
#: iterator, TFX noting that its MLMD query falls back to a slower path, and XLA's start-up
#: notices under --xla (C++ INFO lines that TF_CPP_MIN_LOG_LEVEL does not reach).
KNOWN_NOISE = (
    r"Unable to register cu(FFT|DNN|BLAS) factory",
    r"XLA service 0x[0-9a-f]+ initialized for platform",
    r"StreamExecutor device \(\d+\): ",
    r"Compiled cluster using XLA!",
    r"TF-TRT Warning: Could not find TensorRT",
    r"All log messages before absl::InitializeLog\(\) is called",
    r"Local rendezvous is aborting with status: OUT_OF_RANGE",
    r"ArtifactQuery\.property_predicate is not supported",
)
#: INFO messages of TFX and of this project kept at the warning level: progress per component.
PROGRESS_MESSAGES = (
    r"^Component \S+ is (running|finished)\.$",
    r"^A cached execution \d+ is used\.$",
    r"^Model written to serving path ",
)
#: TF_CPP_MIN_LOG_LEVEL per --log-level (0: everything, 1: warnings, 2: errors).
TF_CPP_LEVELS = {"error": "2", "warning": "1", "info": "2", "debug": "0"}


def log_level_in(argv: Sequence[str]) -> str:
    """The --log-level of a command line, before argparse runs ("warning" if absent or bad)."""
    for index, arg in enumerate(argv):
        value = None
        if arg.startswith("--log-level="):
            value = arg.split("=", 1)[1]
        elif arg == "--log-level" and index + 1 < len(argv):
            value = argv[index + 1]
        if value in TF_CPP_LEVELS:
            return value
    return "warning"


class NativeStderrFilter:
    """Drops lines matching `patterns` from file descriptor 2, which TensorFlow's C++ logging
    (in this process and in Beam worker processes) writes to directly, past Python's sys.stderr.

    `start()` puts a pipe at fd 2 and a thread that copies every other line to the real stderr;
    `stop()` (also at exit) puts the real stderr back and drains the pipe, so a traceback
    printed at exit still gets through.
    """

    def __init__(self, patterns: Sequence[str]):
        import re

        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns).encode())
        self._saved_fd: int | None = None
        self._thread = None

    def start(self) -> None:
        """Starts filtering fd 2 (idempotent)."""
        import atexit
        import threading

        if self._saved_fd is not None:
            return
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(
            target=self._copy, args=(read_fd, os.dup(self._saved_fd)), daemon=True
        )
        self._thread.start()
        atexit.register(self.stop)

    def _copy(self, read_fd: int, out_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe, os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in pipe:
                if not self._pattern.search(line):
                    out.write(line)

    def stop(self) -> None:
        """Puts the real stderr back at fd 2 and forwards what is still in the pipe."""
        if self._saved_fd is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved_fd, 2)  # closes this process's write end of the pipe
        os.close(self._saved_fd)
        self._saved_fd = None
        if self._thread is not None:
            self._thread.join(timeout=5)  # a Beam worker may still hold the pipe open


def configure_native_logging(level: str) -> None:
    """What must be set before TensorFlow loads: its C++ log level (inherited by Beam worker
    processes) and Python warnings in subprocesses; at warning / error, the fd-2 line filter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_LEVELS[level])
    if level in ("warning", "error"):
        # The google-api packages warn about Python 3.10 at every import, in every process.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        NativeStderrFilter(KNOWN_NOISE).start()


class _QuietFilter(python_logging.Filter):
    """At --log-level warning / error: passes records at `level` and above (known noise
    dropped) and, at warning, the INFO progress lines of PROGRESS_MESSAGES."""

    def __init__(self, level: int, keep_progress: bool):
        import re

        super().__init__()
        self._level = level
        self._noise = re.compile("|".join(KNOWN_NOISE))
        self._progress = re.compile("|".join(PROGRESS_MESSAGES)) if keep_progress else None

    def filter(self, record: python_logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= self._level:
            return not self._noise.search(message)
        return self._progress is not None and bool(self._progress.search(message))


def configure_logging(level: str) -> None:
    """Python-side logging for a --log-level (see the module docstring).

    absl (TFX logs through it) stays at INFO so the progress lines can pass the filter; the
    standard loggers of Beam and TensorFlow, and the root logger, get the level itself.
    """
    numeric = {
        "error": python_logging.ERROR,
        "warning": python_logging.WARNING,
        "info": python_logging.INFO,
        "debug": python_logging.DEBUG,
    }[level]
    from absl import logging

    absl_logger = logging.get_absl_logger()
    for old in list(absl_logger.filters):
        if isinstance(old, (_QuietFilter, _FirstLineOfLongInfo)):
            absl_logger.removeFilter(old)
    if level in ("info", "debug"):
        logging.set_verbosity(logging.DEBUG if level == "debug" else logging.INFO)
        absl_logger.addFilter(_FirstLineOfLongInfo())
        return
    logging.set_verbosity(logging.INFO)
    absl_logger.addFilter(_QuietFilter(numeric, keep_progress=level == "warning"))
    for name in ("", "apache_beam", "tensorflow", "keras_tuner"):
        python_logging.getLogger(name).setLevel(numeric)
    warnings.filterwarnings("ignore", category=FutureWarning)


class _FirstLineOfLongInfo(python_logging.Filter):
    """TFX logs whole pipeline IR protos at INFO for every component; keeping their first line
    leaves the per-component progress (`Component X is running.`, executor lines) readable."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        if record.levelno <= python_logging.INFO:
            message = record.getMessage()
            if "\n" in message or len(message) > 400:
                record.msg, record.args = message.split("\n", 1)[0][:300] + " [...]", ()
        return True
