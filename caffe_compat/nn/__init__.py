"""Native PyTorch modules of the segmentation-aware operations (no prototxt needed).

* :class:`SegAwareConv2d` -- segmentation-aware convolution (fused; ``forward(x, embeddings)``,
  ``forward(x, mask=m)`` or ``forward(x, distances=d)``);
* :func:`local_attention_mask` -- ``exp(-|scale * Im2dist(embeddings)|)``;
* :class:`Im2dist` -- windowed embedding distances;
* :class:`EmbeddingDistanceLoss` -- Im2parity + DistLoss, the embedding loss;
* :class:`NormConv2d` -- the fork's NormConv;
* :class:`MeanfieldCRF` -- the fork's NormConvMeanfield.

:mod:`caffe_compat.nn.functional` has the functional forms, shared with the Caffe layers.
"""
from __future__ import annotations

from . import functional
from .functional import local_attention_mask
from .modules import EmbeddingDistanceLoss, Im2dist, MeanfieldCRF, NormConv2d, SegAwareConv2d

__all__ = ["SegAwareConv2d", "local_attention_mask", "Im2dist", "EmbeddingDistanceLoss", "NormConv2d",
           "MeanfieldCRF", "functional"]
