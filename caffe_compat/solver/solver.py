"""``Solver``: the fork's training loop (``Solver::Step`` + ``SGDSolver::ApplyUpdate``), pycaffe-like.

One iteration (``t`` = completed updates, :attr:`Solver.iter`):

1. every parameter gradient is cleared; TEST nets run first when
   ``test_interval`` divides ``t`` (and ``t > 0`` or ``test_initialization``);
2. ``iter_size`` forward/backward passes; gradients are **summed**;
3. ``rate = lr(t)`` (:mod:`.lr_policies`);
4. with ``clip_gradients >= 0``, all gradients are scaled by
   ``clip_gradients / norm`` when their global L2 norm (of the *sum*) exceeds it;
5. per learnable blob, in Caffe's order: ``g /= iter_size``; ``g += weight_decay *
   decay_mult * theta`` (L2) or ``* sign(theta)`` (L1); the update rule with
   ``local_rate = rate * lr_mult`` (:mod:`.update_rules`); ``theta -= update``;
6. ``t += 1``; a snapshot when ``snapshot`` divides ``t``.

``lr_mult: 0`` blobs get no gradient and, since their local rate is 0, never
change.  The displayed loss is the mean over the ``iter_size`` passes,
smoothed over the last ``average_loss`` iterations *of one* :meth:`Solver.step`
call (Caffe resets the window at every call).

Data parallel (``torchrun``): when ``torch.distributed`` is initialised, the
train net runs inside :class:`~torch.nn.parallel.DistributedDataParallel`,
which averages the gradients over the processes after the last ``iter_size``
pass (the others run under ``no_sync``); clipping and the update then see the
mean over processes of the per-process sums, as Caffe's multi-GPU solver.  The
effective batch is ``batch_size * iter_size * world_size`` with the lr
unchanged; HDF5Data layers read interleaved rows (process ``r`` keeps rows
``r, r+N, ...``).  Only rank 0 tests, displays and writes snapshots.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from collections import OrderedDict
from pathlib import Path
from typing import List, Mapping, Optional, Union

import numpy as np
import torch

from ..errors import CaffeCompatError, SolverError
from ..net import Net
from .config import SolverConfig, read_solver
from .lr_policies import learning_rate
from .snapshots import (STATE_FORMAT, STATE_VERSION, read_state, snapshot_names, weights_of_state,
                        write_snapshot)
from .update_rules import RULES

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _f32(x: float) -> float:
    return float(np.float32(x))


def _dist_info():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _log_outputs(which: str, blobs: Mapping[str, torch.Tensor], loss_weights: Mapping[str, float]) -> None:
    """Caffe's ``Train/Test net output #j: name = v (* w = v*w loss)`` lines (one per element)."""
    j = 0
    for name, m in blobs.items():
        w = loss_weights.get(name, 0.0)
        if m.numel() > 64:  # Caffe prints every element; a big blob gets one summary line instead
            log.info("%s net output #%d: %s = %s values, mean %g", which, j, name, list(m.shape),
                     float(m.double().mean()))
            j += m.numel()
            continue
        for v in m.flatten().tolist():
            extra = f" (* {w:g} = {v * w:g} loss)" if w else ""
            log.info("%s net output #%d: %s = %g%s", which, j, name, v, extra)
            j += 1


class Solver:
    """A Caffe solver built from a solver prototxt (``caffe.get_solver`` in pycaffe).

    Args:
        path: the solver prototxt.
        defines: values of ``${NAME}`` variables of the solver file and its nets.
        device: where the nets live (default: ``cuda`` when ``solver_mode: GPU``
            and CUDA is available, else ``cpu``).
        overrides: SolverParameter fields to replace (e.g. ``{"max_iter": 100}``).

    Attributes:
        net: the TRAIN :class:`~caffe_compat.Net`.
        test_nets: TEST nets; their blobs alias :attr:`net`'s (by layer name).
        iter: completed updates.
        param: the ``SolverParameter``.
        history: per learnable blob (Caffe order), its history tensors.
        last_loss: the loss of the last forward pass; ``smoothed_loss``: the
            displayed loss; ``lr``: the rate of the last update.
    """

    def __init__(self, path: PathLike, defines: Optional[Mapping[str, object]] = None, *,
                 device: Optional[Union[str, torch.device]] = None,
                 overrides: Optional[Mapping[str, object]] = None):
        self.config: SolverConfig = read_solver(path, defines, overrides=overrides)
        self.path = Path(path)
        sp = self.param = self.config.param
        self.source = self.config.source
        if device is None:
            gpu = sp.solver_mode == 1 and torch.cuda.is_available()
            device = "cuda" if gpu else "cpu"
        self.device = torch.device(device)
        self.rank, self.world_size = _dist_info()
        seed = int(sp.random_seed) if sp.random_seed >= 0 else None
        if seed is not None:
            torch.manual_seed(seed)
        self.net = self._build(self.config.train, seed)
        self.test_nets: List[Net] = []
        for spec in self.config.tests:
            tn = self._build(spec, seed)
            tn.share_trained_layers_with(self.net)
            self.test_nets.append(tn)
        self.rule = RULES[self.config.type](sp, self.source)
        self._learnable = self.net.learnable_params()
        self.history: List[List[torch.Tensor]] = [
            [torch.zeros_like(lp.param.detach()) for _ in range(self.rule.slots)] for lp in self._learnable]
        self.iter = 0
        self.current_step = 0
        self.lr: Optional[float] = None
        self.last_loss: Optional[float] = None
        self.smoothed_loss: Optional[float] = None
        self._losses: List[float] = []
        self._stop_requested = False
        self._ddp = None
        if self.world_size > 1:
            self._setup_distributed()

    # ------------------------------------------------------------------ construction
    def _build(self, spec, seed) -> Net:
        kw = dict(phase=spec.phase, defines=self.config.defines, level=spec.level, stages=spec.stages,
                  seed=seed, device=self.device)
        try:
            if spec.path is not None:
                return Net(spec.path, **kw)
            return Net(net_param=spec.net_param, source=f"{self.source} (embedded net)", **kw)
        except CaffeCompatError as e:
            raise type(e)(f"solver {self.source}: {e}") from None

    def _setup_distributed(self) -> None:
        from torch.nn.parallel import DistributedDataParallel
        for layer in self.net.layers:
            shard = getattr(layer, "set_shard", None)
            if shard is not None:
                shard(self.rank, self.world_size)
        if any(lp.param.requires_grad for lp in self._learnable):
            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.net, device_ids=ids)
        log.info("data parallel: rank %d of %d (effective batch = batch x iter_size x %d, lr unchanged)",
                 self.rank, self.world_size, self.world_size)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def learnable_params(self):
        """The train net's learnable blobs in Caffe's order (see :meth:`Net.learnable_params`)."""
        return list(self._learnable)

    # ------------------------------------------------------------------ one iteration
    def _forward_backward(self, inputs: Mapping[str, torch.Tensor], sync: bool) -> float:
        module = self._ddp if self._ddp is not None else self.net
        ctx = self._ddp.no_sync() if (self._ddp is not None and not sync) else contextlib.nullcontext()
        with ctx:
            module(**inputs)
            if self.net.loss is None:
                raise SolverError(f"{self.source}: the train net has no loss (no loss layer, no loss_weight)")
            loss = float(self.net.loss.detach())
            self.net.backward()
        return loss

    def _gradients(self) -> List[torch.Tensor]:
        grads = []
        for lp in self._learnable:
            g = lp.param.grad
            grads.append(torch.zeros_like(lp.param.detach()) if g is None else g.detach().clone())
        return grads

    def _clip(self, grads: List[torch.Tensor]) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(float(g.double().pow(2).sum()) for g in grads)
        norm = _f32(math.sqrt(_f32(sumsq)))
        if norm > clip:
            scale = _f32(_f32(clip) / norm)
            log.info("gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                     norm, clip, scale)
            for g in grads:
                g.mul_(scale)

    def _apply_update(self) -> None:
        sp = self.param
        rate, self.current_step = learning_rate(sp, self.iter, self.current_step)
        self.lr = rate
        grads = self._gradients()
        self._clip(grads)
        norm = _f32(1.0 / sp.iter_size)
        wd = _f32(sp.weight_decay)
        l1 = sp.regularization_type == "L1"
        with torch.no_grad():
            for lp, g, hist in zip(self._learnable, grads, self.history):
                if sp.iter_size > 1:
                    g.mul_(norm)
                local_decay = _f32(wd * _f32(lp.decay_mult))
                if local_decay:
                    g.add_(torch.sign(lp.param) if l1 else lp.param, alpha=local_decay)
                local_rate = _f32(rate * _f32(lp.lr_mult))
                upd = self.rule.update(g, hist, local_rate, self.iter)
                lp.param.sub_(upd)

    def _smooth(self, loss: float, start_iter: int) -> None:
        n = self.param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            k = len(self._losses)
            self.smoothed_loss = ((self.smoothed_loss or 0.0) * (k - 1) + loss) / k
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    def step(self, n: int = 1, inputs: Optional[Mapping[str, object]] = None, *, progress=None) -> None:
        """Run ``n`` iterations (``solver.step(n)`` of pycaffe).

        Args:
            n: iterations (each: ``iter_size`` forward/backward passes and one update).
            inputs: tensors (or arrays) by blob name fed to the train net's inputs
                at every pass; the net's data layers feed the rest.
            progress: an optional ``tqdm`` bar advanced once per iteration.
        """
        if n < 0:
            raise SolverError(f"step({n}): the number of iterations must be >= 0")
        inputs = dict(inputs or {})
        sp = self.param
        start_iter = self.iter
        self._losses, self.smoothed_loss = [], None
        stop = self.iter + int(n)
        while self.iter < stop:
            self.net.zero_grad(set_to_none=True)
            if (sp.test_interval and self.iter % sp.test_interval == 0
                    and (self.iter > 0 or sp.test_initialization) and self.is_root):
                self.test_all(inputs)
            total = 0.0
            for s in range(sp.iter_size):
                self.last_loss = self._forward_backward(inputs, sync=s == sp.iter_size - 1)
                total = _f32(total + self.last_loss)
            self._smooth(_f32(total / sp.iter_size), start_iter)
            display = sp.display and self.iter % sp.display == 0
            self._apply_update()
            if display and self.is_root:
                log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
                if log.isEnabledFor(logging.INFO):
                    # (outputs of the last forward; none when step() was fed losses without one)
                    _log_outputs("Train", {k: self.net.blobs[k].detach() for k in self.net.outputs
                                           if k in self.net.blobs},
                                 self.net.loss_weights)
                log.info("Iteration %d, lr = %.6g", self.iter, self.lr)
            self.iter += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{self.smoothed_loss:.4g}", lr=f"{self.lr:.3g}")
            if sp.snapshot and self.iter % sp.snapshot == 0:
                self.snapshot()
            if self._should_stop():
                break

    def _should_stop(self) -> bool:
        """Whether a stop was requested (Ctrl-C); under torchrun by any process, so all stop together."""
        if self._ddp is None and self.world_size == 1:
            return self._stop_requested
        import torch.distributed as dist
        flag = torch.tensor([1.0 if self._stop_requested else 0.0],
                            device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._stop_requested = bool(flag.item())
        return self._stop_requested

    @property
    def stopped_early(self) -> bool:
        """True after :meth:`solve` was stopped by Ctrl-C (a snapshot was written)."""
        return self._stop_requested

    # ------------------------------------------------------------------ the whole run
    def solve(self, inputs: Optional[Mapping[str, object]] = None, progress: bool = True) -> None:
        """Train up to ``max_iter`` (``caffe train``); Ctrl-C snapshots after the current iteration and stops.

        A second Ctrl-C interrupts at once (no snapshot).
        """
        sp = self.param
        self._stop_requested = False
        previous = None

        def on_sigint(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("interrupt: stopping after iteration %d and writing a snapshot "
                        "(Ctrl-C again to stop without one)", self.iter + 1)

        try:
            previous = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            previous = None
        bar = None
        try:
            if progress and self.is_root:
                from tqdm import tqdm
                bar = tqdm(total=sp.max_iter, initial=self.iter, desc="train", unit="it", dynamic_ncols=True)
            self.step(max(sp.max_iter - self.iter, 0), inputs, progress=bar)
        finally:
            if bar is not None:
                bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if (sp.snapshot_after_train or self._stop_requested) and (not sp.snapshot or self.iter % sp.snapshot != 0):
            self.snapshot()
        if self._stop_requested:
            log.warning("optimization stopped early at iteration %d", self.iter)
            return
        if sp.test_interval and self.iter % sp.test_interval == 0 and self.is_root:
            self.test_all(inputs)

    # ------------------------------------------------------------------ testing
    def test(self, k: int = 0, inputs: Optional[Mapping[str, object]] = None) -> "OrderedDict[str, torch.Tensor]":
        """Run TEST net ``k`` for its ``test_iter`` forwards; the mean of each output blob."""
        tn = self.test_nets[k]
        n_iter = self.param.test_iter[k]
        feed = {name: v for name, v in (inputs or {}).items() if name in tn.inputs}
        sums: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        loss = 0.0
        with torch.no_grad():
            for _ in range(n_iter):
                outs = tn.forward(**feed)
                if tn.loss is not None:
                    loss += float(tn.loss)
                for name, v in outs.items():
                    sums[name] = v.detach().double().clone() if name not in sums else sums[name] + v.double()
        means = OrderedDict((name, s / max(n_iter, 1)) for name, s in sums.items())
        if self.param.test_compute_loss:
            log.info("Test loss: %g", loss / max(n_iter, 1))
        _log_outputs("Test", means, tn.loss_weights)
        return means

    def test_all(self, inputs=None) -> List["OrderedDict[str, torch.Tensor]"]:
        """Every TEST net (Caffe's ``TestAll``), logged as ``Test net output`` lines."""
        out = []
        for k in range(len(self.test_nets)):
            log.info("Iteration %d, Testing net (#%d)", self.iter, k)
            out.append(self.test(k, inputs))
        return out

    # ------------------------------------------------------------------ snapshots
    def snapshot_prefix(self) -> str:
        """``snapshot_prefix``, or the solver file's path without extension when unset."""
        return self.param.snapshot_prefix or str(self.path.with_suffix(""))

    def state_dict(self) -> dict:
        """The resumable state (plain containers and tensors; see :mod:`.snapshots`)."""
        data = {name: layer.data_state() for name, layer in zip(self.net.layer_names, self.net.layers)
                if hasattr(layer, "data_state")}
        history = [h[slot].detach().cpu().clone() for slot in range(self.rule.slots) for h in self.history]
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "iter": self.iter,
                "current_step": self.current_step, "type": self.config.type, "net_name": self.net.name,
                "params": [lp.key for lp in self._learnable],
                "shapes": [list(lp.param.shape) for lp in self._learnable],
                "history": history, "data_state": data,
                "rng": self._rng_states()}

    def _rng_states(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "net": self.net.generator.get_state()}
        if self.device.type == "cuda":  # Dropout on CUDA draws from the device's default generator
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def snapshot(self) -> Optional[Path]:
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate.pt``; returns the state path (rank 0 only)."""
        if not self.is_root:
            return None
        weights, state_path = snapshot_names(self.snapshot_prefix(), self.iter, hdf5=self.param.snapshot_format == 0)
        write_snapshot(self.net, self.state_dict(), weights, state_path)
        return state_path

    def restore(self, state: Union[PathLike, dict]) -> None:
        """Continue from a snapshot: our ``.solverstate.pt`` (or its dict) or the fork's ``.solverstate``.

        Loads the weights it names (``learned_net``), the history, ``iter`` and
        ``current_step``; our states also restore data read positions and RNG
        states, so the run continues exactly as if never interrupted.  A state
        of another net (names, count or shapes of the learnable blobs) or of
        another solver type is refused before anything is changed.
        """
        where = "<state dict>"
        if not isinstance(state, dict):
            where = str(state)
            state_path = Path(state)
            state = read_state(state_path)
        else:
            state_path = None
        ours = state.get("format") == STATE_FORMAT
        n_learn, slots = len(self._learnable), self.rule.slots
        if ours:
            if state.get("type") != self.config.type:
                raise SolverError(f"{where}: a state of a {state.get('type')} solver cannot continue a "
                                  f"{self.config.type} solver")
            mine = [lp.key for lp in self._learnable]
            if list(state.get("params", [])) != mine:
                raise SolverError(f"{where}: a state of another net: its learnable blobs are "
                                  f"{list(state.get('params', []))[:8]}..., this net's {mine[:8]}...")
        history = state["history"]
        if len(history) != n_learn * slots:
            raise SolverError(f"{where}: {len(history)} history blobs, this net and {self.config.type} solver "
                              f"need {n_learn} x {slots} = {n_learn * slots} (a state of another net?)")
        for k, h in enumerate(history):
            lp = self._learnable[k % n_learn]
            if h.numel() != lp.param.numel() or (h.dim() and tuple(h.shape) != tuple(lp.param.shape)):
                raise SolverError(f"{where}: history blob {k} has shape {list(h.shape)}, blob {lp.key} of this "
                                  f"net {list(lp.param.shape)} (a state of another net?)")
        weights = weights_of_state(state, state_path) if state_path is not None else None
        if weights is not None:
            if not weights.is_file():
                raise SolverError(f"{where}: its weights file '{weights}' (learned_net) does not exist")
            self.net.load_weights(weights)
        for k, h in enumerate(history):
            slot, i = divmod(k, n_learn)
            self.history[i][slot].copy_(h.reshape(self.history[i][slot].shape))
        self.iter = int(state["iter"])
        self.current_step = int(state["current_step"])
        if ours:
            layers = dict(zip(self.net.layer_names, self.net.layers))
            for name, ds in (state.get("data_state") or {}).items():
                if name in layers and hasattr(layers[name], "set_data_state"):
                    layers[name].set_data_state(ds)
            rng = state.get("rng") or {}
            try:
                if "torch" in rng:
                    torch.set_rng_state(rng["torch"])
                if "net" in rng:
                    self.net.generator.set_state(rng["net"])
                if "cuda" in rng and self.device.type == "cuda":
                    torch.cuda.set_rng_state(rng["cuda"], self.device)
            except (RuntimeError, TypeError, ValueError) as e:
                raise SolverError(f"{where}: invalid RNG state: {e}") from None
        log.info("restored solver state at iteration %d from %s", self.iter, where)
