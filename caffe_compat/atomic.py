"""Atomic file output: a file appears complete or not at all.

Every writer of the package (weights, checkpoints, exported programs, ``.mat``
features, PNGs) goes through :func:`atomic_write`: the content is written to a
temporary file in the destination folder, then renamed onto the final name, so
an error or an interrupt never leaves a partial file behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Type, Union

from .errors import CaffeCompatError

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which races with other threads.
_UMASK = _read_umask()


def atomic_write(path: PathLike, writer: Callable[[str], None], *, error: Type[CaffeCompatError] = CaffeCompatError,
                 overwrite: bool = True, keep_suffix: bool = False) -> bool:
    """Write a file through ``writer(tmp_path)`` and rename it onto ``path``.

    Args:
        path: the final file; its folder must exist (nothing is created).
        writer: writes the complete content to the temporary path it is given.
        error: exception class for a missing folder or an OS error.
        overwrite: when false an existing ``path`` is left alone and ``False``
            returned; the final step is then a hard link, which fails rather than
            replace a file another process created meanwhile.
        keep_suffix: end the temporary name with ``path``'s extension (for
            writers that look at it, e.g. ``torch.export.save``).

    Returns:
        ``True`` if the file was written.

    Errors of the file system (and a writer's own ``OSError``/``ValueError``/
    ``RuntimeError``/``TypeError``, e.g. from h5py) become ``error`` naming the
    path; a writer's :class:`CaffeCompatError` passes unchanged.
    """
    try:
        text = os.fspath(path)
    except TypeError:
        raise error(f"cannot write to {path!r}: not a file path") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\0" in text:
        raise error(f"cannot write {text!r}: the path contains a NUL character")
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise error(f"cannot write '{path}': the folder '{folder}' does not exist (it is not created automatically)")
    if not overwrite and os.path.lexists(path):
        return False
    tmp = None
    try:
        # A short temporary name: a final name near the file-name length limit must still work.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tmp" + (path.suffix if keep_suffix else ""),
                                   dir=str(folder))
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give what open() would
        writer(tmp)
        with open(tmp, "rb+") as fh:  # on disk before it gets the final name
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # file systems without hard links: a checked rename
            if os.path.lexists(path):
                return False
            os.replace(tmp, path)
        return True
    except CaffeCompatError:
        raise
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise error(f"cannot write '{path}': {type(e).__name__}: {e}") from e
    finally:
        if tmp is not None and os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
