"""A Net's ``lr_mult`` / ``decay_mult`` as ``torch.optim`` parameter groups (for plain-PyTorch training).

Example::

    net = caffe_compat.Net("train.prototxt", weights="init.caffemodel", phase="TRAIN")
    opt = torch.optim.SGD(caffe_compat.param_groups(net, lr=1e-3, weight_decay=5e-4), momentum=0.9)

Each group holds the blobs with one ``(lr_mult, decay_mult)`` pair and gets
``lr = lr * lr_mult`` and ``weight_decay = weight_decay * decay_mult``; the
multipliers are kept in the group (``"lr_mult"``, ``"decay_mult"``) so that a
custom schedule can rescale ``lr``.  ``lr_mult: 0`` blobs are left out (they are
frozen).  Note that ``torch.optim.SGD`` applies the lr after the momentum
(``p -= lr*h``, ``h = m*h + g``) where Caffe applies it before (``h = m*h + lr*g``):
the same while the lr is constant, different across lr changes; use
:class:`caffe_compat.Solver` for Caffe's exact rule.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List


def param_groups(net, lr: float = 1.0, weight_decay: float = 0.0) -> List[dict]:
    """Parameter groups of ``net`` (a :class:`~caffe_compat.Net`), one per (lr_mult, decay_mult) pair."""
    groups: "OrderedDict[tuple, dict]" = OrderedDict()
    for lp in net.learnable_params():
        if lp.lr_mult == 0:
            continue
        key = (lp.lr_mult, lp.decay_mult)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr": lr * lp.lr_mult,
                           "weight_decay": weight_decay * lp.decay_mult,
                           "lr_mult": lp.lr_mult, "decay_mult": lp.decay_mult}
        groups[key]["params"].append(lp.param)
        groups[key]["names"].append(lp.key)
    return list(groups.values())
