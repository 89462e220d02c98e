"""Crash-safe file writes: write a temporary file beside the target, fsync, rename into place."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from zoo.errors import ZooError


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Calls write(file) on a temporary file beside `path`, fsyncs it, then renames it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def refuse_existing(out, force):
    """A ZooError if `out` exists and may not be replaced: called before expensive work too."""
    if Path(out).exists() and not force:
        raise ZooError(f"{out}: already exists (pass --force to replace it)")


@contextlib.contextmanager
def atomic_directory(out, force=False):
    """Yields a temporary directory beside `out` to fill; then fsyncs every file in it and renames
    it into place (replacing an existing `out` only with `force`). On an error it is removed and
    `out` is left as it was."""
    out = Path(out)
    refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tmp.chmod(0o755)
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
