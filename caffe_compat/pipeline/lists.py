"""List files of the data layers and of MatWrite, parsed as the fork parsed them.

Three parsing styles exist in the fork, and they differ on malformed input:

* **line based** (``ImageSegData``, ``MatWrite``): ``std::getline`` + first
  (and second) whitespace token of each line.  Extra tokens are ignored.
* **token stream** (``ImageData``: ``infile >> path >> int_label``;
  ``TwoImageData``: ``infile >> path1 >> path2``): line breaks do not matter,
  and for ``ImageData`` reading **stops silently** at the first label that is
  not an integer (a line without a label ends the list there).

Whitespace is C's ``isspace`` set (space, ``\\t``, ``\\n``, ``\\v``, ``\\f``,
``\\r``), so Windows line endings are harmless.  Paths are kept byte-exact
(undecodable bytes survive through ``surrogateescape``).

Deliberate differences from the fork (each would crash or misbehave there):

* blank (whitespace-only) lines are skipped; the fork turns one into an entry
  with an empty path (``ImageSegData``: fails to read ``root_folder + ""``;
  ``MatWrite``: the "Too much stripping" CHECK);
* a missing or unreadable list file, and a list with no entries, raise
  :class:`~caffe_compat.errors.DataError` (the fork reads an empty list and
  then indexes element 0);
* ``label_type: PIXEL`` lines without a label path raise (the fork would try
  to read ``root_folder + ""``).
"""
from __future__ import annotations

import os
import re
from typing import List, Tuple

from ..errors import DataError

_WS = re.compile(r"[ \t\n\v\f\r]+")
_INT = re.compile(r"[+-]?[0-9]+")
_INT_MIN, _INT_MAX = -(2 ** 31), 2 ** 31 - 1


def read_text_file(path: str, cannot: str) -> str:
    """The text of ``path`` (bytes kept through ``surrogateescape``).

    A missing file, a directory or an OS error raises :class:`DataError`
    whose message starts with ``cannot`` (e.g. ``"cannot open list file 'x'"``).
    """
    if not os.path.exists(path):
        raise DataError(f"{cannot}: the file does not exist")
    if os.path.isdir(path):
        raise DataError(f"{cannot}: it is a directory")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{cannot}: {e}") from None
    return data.decode("utf-8", errors="surrogateescape")


def read_list_text(path: str, what: str = "list file") -> str:
    """The text of a list file, with clear errors for a missing/unreadable file."""
    if not path:
        raise DataError(f"{what}: no file name given (source is empty)")
    return read_text_file(path, f"cannot open {what} '{path}'")


def _tokens(line: str) -> List[str]:
    return [t for t in _WS.split(line) if t]


def _lines(text: str):
    """``(line_number, tokens)`` of every non-blank line (``std::getline`` splits on ``\\n``)."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    for i, line in enumerate(parts, start=1):
        toks = _tokens(line)
        if toks:
            yield i, toks


def _nonempty(entries: list, path: str, what: str) -> list:
    if not entries:
        raise DataError(f"{what} '{path}' has no entries")
    return entries


def atoi(text: str) -> int:
    """C's ``atoi``: optional leading whitespace and sign, then digits; 0 if none."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if not m:
        return 0
    v = int(m.group(1))
    # Out-of-range values are undefined in C; clamp like strtol does.
    return max(_INT_MIN, min(_INT_MAX, v))


def read_seg_list(path: str, needs_second: bool, pixel_labels: bool) -> List[Tuple[str, str]]:
    """``ImageSegData`` list: ``(image_path, second_token)`` per non-blank line.

    Args:
        path: the list file.
        needs_second: ``label_type != NONE`` (the second token is read).
        pixel_labels: ``label_type == PIXEL`` (the second token is a label image
            path and must be present).  For ``IMAGE`` a missing token reads as
            ``""`` and ``atoi("") = 0``, as in the fork.
    """
    text = read_list_text(path, "ImageSegData list file")
    out = []
    for ln, toks in _lines(text):
        second = toks[1] if (needs_second and len(toks) > 1) else ""
        if pixel_labels and not second:
            raise DataError(f"list file '{path}' line {ln}: label_type PIXEL needs two paths "
                            f"(image and label image), found only {toks[0]!r}")
        out.append((toks[0], second))
    return _nonempty(out, path, "list file")


def read_image_label_list(path: str) -> List[Tuple[str, int]]:
    """``ImageData`` list: ``while (infile >> filename >> label)`` over the whole file.

    Emulates ``operator>>(int)``: leading digits of a token are the label (the
    rest of the token becomes the next file name); reading stops at the first
    label with no digits or out of ``int`` range.
    """
    text = read_list_text(path, "ImageData list file")
    out: List[Tuple[str, int]] = []
    pos, n = 0, len(text)
    ws = " \t\n\v\f\r"
    while True:
        while pos < n and text[pos] in ws:
            pos += 1
        if pos >= n:
            break
        end = pos
        while end < n and text[end] not in ws:
            end += 1
        name = text[pos:end]
        pos = end
        while pos < n and text[pos] in ws:
            pos += 1
        m = _INT.match(text, pos)
        if not m:
            break
        v = int(m.group(0))
        if v < _INT_MIN or v > _INT_MAX:
            break
        out.append((name, v))
        pos = m.end()
    return _nonempty(out, path, "list file")


def read_pair_list(path: str) -> List[Tuple[str, str]]:
    """``TwoImageData`` list: ``while (infile >> first >> second)``; a lone last token is dropped."""
    text = read_list_text(path, "TwoImageData list file")
    toks = _tokens(text)
    out = [(toks[i], toks[i + 1]) for i in range(0, len(toks) - 1, 2)]
    return _nonempty(out, path, "list file")


def read_id_list(path: str, strip: int = 0) -> List[str]:
    """``MatWrite`` ids: first token of each non-blank line, minus ``strip`` trailing characters.

    Raises :class:`DataError` if an id is not longer than ``strip`` (the fork's
    "Too much stripping" CHECK).
    """
    text = read_list_text(path, "MatWrite id list")
    out = []
    for ln, toks in _lines(text):
        name = toks[0]
        if len(name) <= strip:
            raise DataError(f"id list '{path}' line {ln}: id {name!r} has {len(name)} characters, "
                            f"not more than strip = {strip} (too much stripping)")
        out.append(name[:len(name) - strip] if strip else name)
    return _nonempty(out, path, "id list")


def join_root(root_folder: str, name: str) -> str:
    """``root_folder + name``: Caffe concatenates verbatim (no separator is added)."""
    return f"{root_folder}{name}"


__all__ = ["read_text_file", "read_list_text", "read_seg_list", "read_image_label_list", "read_pair_list",
           "read_id_list", "join_root", "atoi"]
