"""File access for model base paths and config files: local paths and TensorFlow file systems.

A path with a URL scheme (`gs://`, `s3://`, `hdfs://`, `ram://`, ...) is read through
`tf.io.gfile`, so it works wherever TensorFlow has that file system (TensorFlow itself is then
imported on first use). Plain paths use `os` directly, which keeps their checks free of the
TensorFlow import and lets them name local problems precisely (a dangling link, a file where a
directory should be).
"""

from __future__ import annotations

import os
import re
import stat

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
EXPECTED_BASE_PATH = "expected a directory of numbered SavedModel versions (1/, 2/, ...)"


def is_remote(path: str) -> bool:
    """Whether `path` names a TensorFlow file system by its scheme (gs://, s3://, ram://...)."""
    return bool(_SCHEME.match(path))


def join(base: str, *parts: str) -> str:
    """`base` joined with `parts` ("/" for TensorFlow file systems, os.path.join otherwise)."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def read_bytes(path: str) -> bytes:
    """The bytes of a file (OSError or tf.errors.OpError when it cannot be read)."""
    if is_remote(path):
        with _gfile().GFile(path, "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def read_text_file(path: str) -> str:
    """The UTF-8 text of a config file.

    Raises:
        ValueError: the file is missing, unreadable, a directory or not UTF-8 (names the cause).
    """
    if is_remote(path):
        import tensorflow as tf

        try:
            if _gfile().isdir(path):
                raise ValueError("cannot be read (Is a directory)")
            data = read_bytes(path)
        except tf.errors.OpError as error:
            raise ValueError(f"cannot be read ({error.message})") from None
    else:
        try:
            data = read_bytes(path)
        except OSError as error:
            raise ValueError(f"cannot be read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"is not UTF-8 text (byte {error.start})") from None


def base_path_problem(path: str) -> str | None:
    """Why `path` cannot be a model base path, or None.

    A path that does not exist yet is fine (versions may be pushed later, and are picked up by
    the poll); a file, a dangling symbolic link or a directory that cannot be listed is not.
    """
    if is_remote(path):
        return _remote_base_path_problem(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return (
                f"is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                f"{EXPECTED_BASE_PATH}"
            )
        return None
    except NotADirectoryError:
        return f"has a file where a parent directory should be; {EXPECTED_BASE_PATH}"
    except OSError as error:
        return f"cannot be read ({error.strerror or error}); {EXPECTED_BASE_PATH}"
    if not stat.S_ISDIR(info.st_mode):
        return f"is not a directory; {EXPECTED_BASE_PATH}"
    try:
        with os.scandir(path):
            pass
    except OSError as error:
        return f"cannot be read ({error.strerror or error}); {EXPECTED_BASE_PATH}"
    return None


def _remote_base_path_problem(path: str) -> str | None:
    import tensorflow as tf

    gfile = _gfile()
    try:
        if not gfile.exists(path):
            return None
        if not gfile.isdir(path):
            return f"is not a directory; {EXPECTED_BASE_PATH}"
        gfile.listdir(path)
    except tf.errors.OpError as error:
        return f"cannot be read ({error.message}); {EXPECTED_BASE_PATH}"
    return None


def numbered_subdirectories(base_path: str) -> dict[int, str]:
    """Version number -> path of the numeric sub-directories of `base_path` ({} if it is absent).

    Hidden staging directories (".2.tmp") are not numeric, so a version appears once whole.

    Raises:
        ValueError: the base path is not a directory that can be listed (see base_path_problem).
    """
    problem = base_path_problem(base_path)
    if problem is not None:
        raise ValueError(f"base path {base_path!r} {problem}")
    if is_remote(base_path):
        import tensorflow as tf

        gfile = _gfile()
        try:
            names = [name.rstrip("/") for name in gfile.listdir(base_path)]
            return {
                int(name): join(base_path, name)
                for name in names
                if name.isdigit() and gfile.isdir(join(base_path, name))
            }
        except tf.errors.NotFoundError:
            return {}
    try:
        entries = list(os.scandir(base_path))
    except FileNotFoundError:
        return {}
    return {int(e.name): e.path for e in entries if e.name.isdigit() and e.is_dir()}


def tree_stamp(path: str) -> tuple:
    """Changes whenever files under `path` are added, removed or rewritten (sizes and mtimes;
    a file system without mtimes, such as ram://, is stamped by names and sizes)."""
    stamp = []
    if is_remote(path):
        import tensorflow as tf

        gfile = _gfile()
        for root, _, files in gfile.walk(path):
            for name in files:
                try:
                    info = gfile.stat(join(root, name))
                except tf.errors.NotFoundError:
                    continue
                stamp.append((root, name, info.length, info.mtime_nsec))
        return tuple(sorted(stamp))
    for root, _, files in os.walk(path):
        for name in files:
            try:
                info = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            stamp.append((root, name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))
