"""Writing a file so that a reader never sees half of it: one helper for every file minivae writes
whole (checkpoints, config.json, summary.json, pictures, downloaded data).

The bytes go to a temporary file in the destination's folder, are flushed to the disk (fsync),
and the file is renamed over the destination: ``os.replace`` is atomic within one file system, so
a crash or a full disk leaves the old file or the new one, never a partial one, and the temporary
file is removed on every failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer (another process, another call) uses:
    ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a fresh temporary file beside ``path``, then move it to ``path``.

    The temporary file is opened with ``"xb"``: it gets the umask's permissions (the same mode as
    any other file the user writes; mkstemp's would be 0600) and can never clobber another file.
    An OSError with an errno (a full disk, no permission) is raised again naming ``path``, the file
    the user knows, not the temporary one; any other exception passes through unchanged. Returns
    ``path`` as a Path.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` of ``text`` encoded as UTF-8."""
    return atomic_write(path, lambda fh: fh.write(text.encode()))
