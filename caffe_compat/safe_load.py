"""Loading ``torch.export`` programs (``.pt2``) without unpickling anything untrusted.

``torch.export.load`` unpickles parts of the archive (sample inputs, weights or
constants marked ``use_pickle``, opaque objects) and falls back to
``weights_only=False`` when the safe unpickler refuses: a crafted ``.pt2``
file could run code on load.  :func:`load_program_safely` runs it with every
one of those paths made safe for the duration of the call: ``torch.load`` is
forced to ``weights_only=True`` (tensors and plain containers only), and
plain ``pickle.loads`` / TorchScript object unpickling are refused.  A program
that needs them (custom script objects) cannot be loaded: it is refused with
:class:`~caffe_compat.errors.WeightsError`; nothing in it runs.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import types
from typing import Union

import torch

from .errors import WeightsError

_LOCK = threading.Lock()


class RefusedUnpickling(Exception):
    """Raised in place of an unsafe unpickling step while a program loads."""


def _refuse(*args, **kwargs):
    raise RefusedUnpickling("the archive holds a pickled Python object (refused: only tensors may be loaded)")


@contextlib.contextmanager
def no_unsafe_unpickling():
    """Within the block, ``torch.load`` is ``weights_only=True`` and raw unpickling is refused.

    Patches module attributes for the duration (under a lock, so concurrent
    loads wait for each other); everything is restored afterwards.
    """
    from torch.export.pt2_archive import _package

    real_load = torch.load
    real_pickle_load_obj = getattr(torch._C, "_pickle_load_obj", None)
    real_pickle = getattr(_package, "pickle", None)

    @functools.wraps(real_load)
    def weights_only_load(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
        if pickle_module is not None:
            _refuse()
        return real_load(f, map_location=map_location, weights_only=True, **kwargs)

    safe_pickle = types.SimpleNamespace(loads=_refuse, load=_refuse, Unpickler=_refuse,
                                        dumps=getattr(real_pickle, "dumps", None),
                                        UnpicklingError=getattr(real_pickle, "UnpicklingError", Exception))
    with _LOCK:
        torch.load = weights_only_load
        if real_pickle_load_obj is not None:
            torch._C._pickle_load_obj = _refuse
        if real_pickle is not None:
            _package.pickle = safe_pickle
        try:
            yield
        finally:
            torch.load = real_load
            if real_pickle_load_obj is not None:
                torch._C._pickle_load_obj = real_pickle_load_obj
            if real_pickle is not None:
                _package.pickle = real_pickle


def load_program_safely(path: Union[str, os.PathLike]):
    """``torch.export.load(path)`` with no unsafe unpickling; errors are :class:`WeightsError` naming the file."""
    p = os.fspath(path)
    try:
        if not os.path.isfile(p):
            raise WeightsError(f"{p}: no such exported program")
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{path!r}: not a usable path: {e}") from None
    try:
        with no_unsafe_unpickling():
            return torch.export.load(p)
    except WeightsError:
        raise
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
        if _caused_by_refusal(e) or "Weights only load failed" in msg:
            raise WeightsError(f"{p}: refused: the program holds pickled Python objects, which could run code "
                               f"when loaded (only tensors and plain containers are accepted)") from None
        raise WeightsError(f"{p}: not a readable torch.export program: {type(e).__name__}: {msg}") from None


def _caused_by_refusal(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, RefusedUnpickling):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
