"""The layer base class and the registry of Caffe layer types.

A layer is a small :class:`torch.nn.Module` built from one ``LayerParameter``
message and the shapes of its bottoms.  It parses and validates its parameters
once in ``__init__``, declares its learnable blobs (in Caffe's blob order) with
:meth:`Layer.add_blob`, and computes ``forward(*bottoms) -> tuple of tops``.

The net builder (:mod:`caffe_compat.net`) never mentions a layer type: it looks
the type name up in :data:`REGISTRY`.  Users add their own types with
:func:`register_layer`.

Shape inference runs each layer on tensors of the ``meta`` device inside
:func:`shape_only`; layers with side effects (data readers, file writers,
stateful counters) check :func:`in_shape_pass` and return empty meta tensors
of the right shape instead of reading or writing anything.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..errors import LayerConfigError, ShapeError, UnknownLayerError, layer_error
from ..fillers import fill

log = logging.getLogger(__name__)

#: Refuse any single blob with more elements than this (before allocating).
MAX_BLOB_ELEMENTS = 2 ** 34

_SHAPE_PASS = contextvars.ContextVar("caffe_compat_shape_pass", default=False)


@contextlib.contextmanager
def shape_only():
    """Context in which layers compute shapes only (meta tensors, no side effects)."""
    token = _SHAPE_PASS.set(True)
    try:
        yield
    finally:
        _SHAPE_PASS.reset(token)


def in_shape_pass() -> bool:
    """True while the net infers shapes on the meta device."""
    if torch.compiler.is_compiling():
        # shape passes run eagerly, never under torch.compile (which cannot trace ContextVar.get)
        return False
    return _SHAPE_PASS.get()


@dataclass
class BuildContext:
    """What a layer may know about the net it is built into.

    Attributes:
        phase: ``"TRAIN"`` or ``"TEST"``.
        generator: seeded RNG for fillers (CPU generator).
        device: device the learnable blobs are created on (``"meta"`` builds
            a net for shape inspection without allocating weights).
        dtype: floating dtype of blobs and activations (float32 as in Caffe).
        source: name of the prototxt, for error messages.
        shared_blobs: blob index -> the Parameter an earlier layer owns under
            the same ``param { name }``; :meth:`Layer.add_blob` reuses it (when
            the shape matches) instead of allocating and filling a copy.
        memory: a :class:`caffe_compat.memory.Reservation` that :meth:`Layer.add_blob`
            charges before allocating (``None``: no budget).
    """

    phase: str = "TEST"
    generator: Optional[torch.Generator] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    source: str = "<string>"
    shared_blobs: Dict[int, nn.Parameter] = field(default_factory=dict)
    memory: Optional[object] = None


def check_shape(shape: Sequence[int], what: str) -> Tuple[int, ...]:
    """Validate a blob shape: non-negative ints and a sane element count."""
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"{what}: shape must be a sequence of integers, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ShapeError(f"{what}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if count > MAX_BLOB_ELEMENTS:
        raise ShapeError(
            f"{what}: shape {list(shape)} has {count} elements, more than the limit "
            f"{MAX_BLOB_ELEMENTS} (refusing to allocate)")
    return shape


def _append_parameter(plist: nn.ParameterList, p: nn.Parameter) -> None:
    """``plist.append(p)`` without nn.Module's per-attribute checks.

    A net of thousands of layers creates thousands of blobs; ``append`` goes through
    ``__setattr__`` and ``register_parameter`` (~15 us each).  The list's state is its
    ``_parameters`` entry ``str(index)`` and its ``_size`` counter (torch 2.x), set here
    directly; tests check that the result is an ordinary ParameterList.
    """
    i = len(plist)
    plist._parameters[str(i)] = p
    plist.__dict__["_size"] = i + 1


def _append_module(mlist: nn.ModuleList, m: nn.Module) -> None:
    """``mlist.append(m)`` without ``add_module``'s per-call checks (~7 us; a net appends every layer).

    A ModuleList's state is its ``_modules`` entry ``str(index)`` (torch 2.x); tests check that
    the result is an ordinary ModuleList.
    """
    mlist._modules[str(len(mlist))] = m


def blob_list(layer: "Layer") -> List[nn.Parameter]:
    """``list(layer.blobs)`` read straight from the ParameterList (its indexing goes through getattr, ~4 us a blob)."""
    return list(layer._modules["blobs"]._parameters.values())


class Layer(nn.Module):
    """Base class of every Caffe layer.

    Subclasses set the class attributes below, parse ``self.param`` in
    ``__init__`` (after calling ``super().__init__``) and implement
    ``forward(*bottoms)`` returning a tuple of top tensors.

    Class attributes:
        type_name: the Caffe type string (set by :func:`register_layer`).
        num_bottoms: ``(min, max)`` number of bottoms (max ``None`` = unbounded).
        num_tops: ``(min, max)`` number of tops listed in the prototxt.
        auto_tops: if set, Caffe's ``AutoTopBlobs``: the layer always produces
            this many tops, and the net names the unlisted ones ``(automatic)``.
        is_loss: the first top is a loss (default ``loss_weight`` 1).
        feeds_net_inputs: the layer only declares net inputs (``Input``): the net
            takes the shapes of its tops from :meth:`input_shapes_for`, lists them
            among :attr:`Net.inputs <caffe_compat.net.Net.inputs>` and never calls
            :meth:`forward`.
        exportable: the layer can be part of a ``torch.export`` program; false for
            layers that write files or keep state across forwards (see
            :meth:`export_refusal`, which also refuses bottomless layers).
        same_shape_tops: every top has the shape (and dtype) of bottom 0, whatever the
            parameters: shape inference takes it without running the layer on meta
            tensors (which costs up to milliseconds per call for element-wise ops).
    """

    type_name: ClassVar[str] = ""
    num_bottoms: ClassVar[Tuple[int, Optional[int]]] = (1, 1)
    num_tops: ClassVar[Tuple[int, Optional[int]]] = (1, 1)
    auto_tops: ClassVar[Optional[int]] = None
    is_loss: ClassVar[bool] = False
    feeds_net_inputs: ClassVar[bool] = False
    exportable: ClassVar[bool] = True
    same_shape_tops: ClassVar[bool] = False

    def __init__(self, param, bottom_shapes: Sequence[Sequence[int]], ctx: BuildContext):
        super().__init__()
        # plain attributes straight into __dict__: nn.Module.__setattr__ costs ~5 us each, which
        # adds up in nets of thousands of layers
        self.__dict__.update(name=param.name, param=param, ctx=ctx,
                             bottom_shapes=[tuple(int(d) for d in s) for s in bottom_shapes])
        self._modules["blobs"] = nn.ParameterList()   # what `self.blobs = ...` does, minus its checks
        self._check_counts(len(bottom_shapes), "bottom", self.num_bottoms)
        n_tops = len(param.top)
        # forward() reads this, not the protobuf (dynamo cannot trace protobuf containers)
        self.__dict__["n_listed_tops"] = n_tops
        lo, hi = self.num_tops
        if self.auto_tops is not None:
            lo, hi = min(lo, n_tops), max(self.auto_tops, n_tops if hi is None else hi)
        self._check_counts(n_tops, "top", (lo, hi))

    # -- helpers for subclasses -------------------------------------------------
    def _check_counts(self, n: int, what: str, bounds) -> None:
        lo, hi = bounds
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise self.error(f"needs {want} {what} blob(s), got {n}")

    def error(self, message: str, cls=LayerConfigError):
        """An exception naming this layer; ``raise self.error("...")``."""
        return layer_error(self.name, self.type_name or type(self).__name__, message, cls)

    def add_blob(self, shape: Sequence[int], init) -> nn.Parameter:
        """Create the next learnable blob (Caffe order).

        Args:
            shape: blob shape (may be ``()`` for Caffe's 0-axis scalar blobs).
            init: a ``FillerParameter`` message, or a callable
                ``init(tensor, generator)`` filling the tensor in place.
        """
        blobs = self._modules["blobs"]
        shape = check_shape(shape, f"layer '{self.name}' blob {len(blobs)}")
        ctx = self.ctx
        shared = ctx.shared_blobs.get(len(blobs)) if ctx.shared_blobs else None
        if shared is not None and tuple(shared.shape) == shape:
            _append_parameter(blobs, shared)
            return shared
        on_meta = ctx.device.type == "meta"
        if ctx.memory is not None and not on_meta:
            ctx.memory.reserve(math.prod(shape) * ctx.dtype.itemsize,
                               lambda: f"{ctx.source}: layer '{self.name}' ({self.type_name}) blob "
                                       f"{len(blobs)} of shape {list(shape)}")
        data = torch.empty(shape, dtype=ctx.dtype, device="meta" if on_meta else "cpu")
        if not on_meta:
            # Fill on the CPU with the net's CPU generator, then move: the same seeded
            # values on every device (a CPU generator cannot fill a CUDA tensor).  `data` is
            # not a leaf that requires grad, so filling it needs no no_grad() (~4 us a blob).
            if callable(init):
                init(data, ctx.generator)
            else:
                fill(data, init, ctx.generator, where=f"layer '{self.name}'")
            if ctx.device.type != "cpu":
                data = data.to(ctx.device)
        p = nn.Parameter(data)
        _append_parameter(blobs, p)
        return p

    # -- API -----------------------------------------------------------------
    def forward(self, *bottoms):  # pragma: no cover - abstract
        raise NotImplementedError

    def input_shapes_for(self, n_tops: int) -> List[Tuple[int, ...]]:
        """Shapes of the ``n_tops`` net inputs a :attr:`feeds_net_inputs` layer declares.

        Called once by the net builder (instead of a shape pass) for layers with
        ``feeds_net_inputs``; other layers never receive it.
        """
        raise self.error("declares no net inputs (feeds_net_inputs is false)")

    def set_net_outputs(self, top_indices: Sequence[int]) -> None:
        """Told once after the net is built which of this layer's tops (indices) are net outputs.

        The default ignores it; a layer overrides it when it behaves like the
        fork's net there (DummyData: element 0 of a never-refilled output top
        reads 0 after the first forward).
        """

    def export_refusal(self) -> Optional[str]:
        """Why this layer cannot be exported with ``torch.export`` (``None``: it can).

        The default refuses layers whose class sets ``exportable = False`` and
        layers built without bottoms (they produce data of their own, like a
        reader); layers whose exportability depends on their parameters
        (DummyData) override it.
        """
        if self.exportable and self.bottom_shapes:
            return None
        return self.type_name or type(self).__name__

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


REGISTRY: Dict[str, Type[Layer]] = {}


_BUILTIN_PACKAGE = __name__.rsplit(".", 1)[0] + "."  # "caffe_compat.layers."


def _is_builtin(cls: type) -> bool:
    return cls.__module__.startswith(_BUILTIN_PACKAGE)


def register_layer(type_name: str, *aliases: str) -> Callable[[Type[Layer]], Type[Layer]]:
    """Class decorator registering a :class:`Layer` under Caffe type names.

    A user's registration always wins over the built-in layer of that name,
    whenever it is made: the built-in families are imported lazily (on the
    first lookup), and a built-in class never replaces a class registered from
    outside ``caffe_compat.layers``.  Re-registering a name from user code
    replaces the previous class (so users can override a built-in layer, or
    their own earlier one, on purpose).
    """

    def deco(cls: Type[Layer]) -> Type[Layer]:
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"register_layer({type_name!r}) expects a Layer subclass, got {cls!r}")
        cls.type_name = type_name
        builtin = _is_builtin(cls)
        for name in (type_name,) + aliases:
            old = REGISTRY.get(name)
            if builtin and old is not None and not _is_builtin(old):
                log.debug("layer type %r: keeping the user's %s over the built-in %s",
                          name, old.__qualname__, cls.__qualname__)
                continue
            REGISTRY[name] = cls
        return cls

    return deco


def get_layer_class(type_name: str, layer_name: str = "?") -> Type[Layer]:
    """Look a type name up, with an error listing the known types."""
    from . import _load_builtin_layers

    _load_builtin_layers()
    try:
        return REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownLayerError(
            f"layer '{layer_name}': unknown layer type {type_name!r}. Known types: {known}. "
            f"Register new types with caffe_compat.register_layer.") from None
