"""REB (Lyu et al., "Reducing Biases in Representation"; seed 004): DefectMaker self-supervised
fine-tuning of the backbone, then LDKNN on the fine-tuned features (spec §1).

    prepare_backbone: a copy of the backbone up to its deepest stage (the spec's layer4) is fine-tuned on
                      the 7-class DefectMaker task (adtk.toolkit.training); its weights are copied into the
                      truncated backbone of the scoring graph, so the artefact carries them. The manifest's
                      weights_sha256 is that of the fine-tuned weights.
    fit / head:       LDKNN (toolkit/methods/ldknn.py), unchanged.

The fit report records the preset, the final proxy loss and accuracy, the device, and the keep-or-revert
check (training/proxy_validation.py): a few fit images are held out of the fine-tune, DefectMaker defects
are pasted into them, and LDKNN scores them once with the fine-tuned and once with the starting weights.
Unless the fine-tuned weights are clearly better at image level (paired-bootstrap lower bound of the gain > 0)
and not worse at pixel level, the artefact keeps the starting (ImageNet) weights, so `--method reb` is then
exactly LDKNN. The build says which weights shipped and why: a log line, the manifest's
`method.fit.finetune.shipped` / `.shipped_reason` / `.validation`, and the backbone's weights_source.
`validate=False` keeps the fine-tuned weights unchecked (the golden build test uses it).

Differences from the spec, on purpose: images are resized with the artefact's own preprocessing
(FramePreprocess: bilinear, the backbone's mean/std) instead of PIL bicubic + ImageNet statistics, so the
fine-tuning sees exactly the pixels the deployed graph sees; no saliency model ships, so defects may be
centred anywhere (the spec's fallback for textures, §2); the default preset is far smaller than the
paper's (training/finetune.py says why), `preset="paper"` runs the spec's schedule.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.backbones import deepest_stage, state_dict_sha256
from adtk.toolkit.methods.base import FitInputs, PreparedBackbone, register_method
from adtk.toolkit.methods.ldknn import LDKNN
from adtk.toolkit.preprocess import RESIZE_ALIGN_CORNERS, RESIZE_ANTIALIAS, RESIZE_MODE, FramePreprocess

# The fast preset's budget (24 updates of 21 images) was set with frames of at most this many pixels (256 x 256 on
# near-square sets, 640 x 256 on tall frames before plain --size auto kept their own resolution): a larger model size
# fine-tunes on its frames scaled down to it, so the fine-tune costs the same whatever the scoring size (a 1248 x 496
# model size would take ~3.8x its ~280 s on 2 cores). The keep-or-revert check scores at the model size.
FINETUNE_MAX_PIXELS = 640 * 256


def finetune_size(model_hw: tuple[int, int]) -> tuple[int, int]:
    """The model size, or the model size scaled down to FINETUNE_MAX_PIXELS (aspect kept; sides multiples of 8:
    the proxy task pools its deepest map globally, so no stride has to divide them)."""
    height, width = model_hw
    if height * width <= FINETUNE_MAX_PIXELS:
        return height, width
    scale = (FINETUNE_MAX_PIXELS / (height * width)) ** 0.5
    return max(32, int(height * scale) // 8 * 8), max(32, int(width * scale) // 8 * 8)


# The fine-tune and its keep-or-revert check (torch training, DefectMaker's scipy/scikit-image, the validation's
# scikit-learn metrics) are imported when REB is made or run, not with the method registry: every other build
# and every `adtk` command imports this module, and those imports cost ~0.7 s of each one's start-up.


def frames_at_model_size(images, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] images (any sizes) -> uint8 [N, S_h, S_w, 3], resized exactly as FramePreprocess does,
    so the fine-tuning sees the pixels the features will be extracted from."""
    frames = []
    for image in images:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(torch.float32)
        x = F.interpolate(x, size=size_hw, mode=RESIZE_MODE, align_corners=RESIZE_ALIGN_CORNERS,
                          antialias=RESIZE_ANTIALIAS)
        frames.append(x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    if not frames:
        raise DataError("reb: no training images to fine-tune on; check the data folder's train/good")
    return np.stack(frames)


def copy_shared_weights(source: nn.Module, target: nn.Module) -> None:
    """Load every tensor of `target`'s state dict from `source` (a deeper copy of the same network)."""
    source_state, target_state = source.state_dict(), target.state_dict()
    missing = [key for key in target_state if key not in source_state]
    if missing:
        raise ConfigError(f"reb: the fine-tuned network lacks {len(missing)} tensors of the scoring backbone "
                          f"(e.g. {missing[:3]}); this backbone cannot be fine-tuned by reb")
    target.load_state_dict({key: source_state[key].detach().to("cpu") for key in target_state}, strict=True)


@register_method("reb")
class REB(LDKNN):
    """DefectMaker fine-tuning + LDKNN (spec: REB, seed 004). `preset`: "fast" (default) or "paper"."""

    def __init__(self, preset: str = "fast", coreset_ratio: float = 0.1, num_neighbors: int = 5,
                 alpha: float = 1.0, distance: str = "squared", image_score: str = "pooled",
                 embed_dim: int | None = None, projection_dim: int = 128, seed: int = 0, validate: bool = True,
                 sampler: str = "grouped", group_rows: int | None = None, density_search: str = "approximate"):
        from adtk.toolkit.training.finetune import PRESETS

        if preset not in PRESETS:
            raise ConfigError(f"reb: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        super().__init__(coreset_ratio=coreset_ratio, num_neighbors=num_neighbors, alpha=alpha,
                         distance=distance, image_score=image_score, embed_dim=embed_dim,
                         projection_dim=projection_dim, seed=seed, sampler=sampler, group_rows=group_rows,
                         density_search=density_search)
        self.preset = preset
        self.validate = bool(validate)
        self.finetune_report: dict | None = None
        self.finetuned_backbone = None

    def prepare_backbone(self, backbone, preprocess, images, make_backbone, progress=None) -> PreparedBackbone:
        """-> the fine-tuned backbone, or the starting one if the keep-or-revert check rejects the fine-tune; the
        report ({"finetune": ...}) goes into the manifest's method.fit whichever is kept."""
        from adtk.toolkit.training.finetune import finetune_backbone
        from adtk.toolkit.training.proxy_validation import split_heldout, validate_finetune

        deep = make_backbone(stages=(deepest_stage(backbone.name),), trainable=True)
        frames = frames_at_model_size(images, preprocess.image_size_px)
        seed = self.seed
        tuned, heldout = split_heldout(len(frames), seed) if self.validate else (np.arange(len(frames)), [])
        tune_hw = finetune_size(preprocess.image_size_px)
        if tune_hw == preprocess.image_size_px:
            tune_frames, tune_preprocess = frames[tuned], preprocess
        else:
            self._say(f"reb: fine-tuning on the frames at {tune_hw[0]}x{tune_hw[1]} px (the model size "
                      f"{preprocess.image_size_px[0]}x{preprocess.image_size_px[1]} scaled to the preset's budget)")
            tune_frames = frames_at_model_size(frames[tuned], tune_hw)  # the images are read once (lazy)
            tune_preprocess = FramePreprocess(tune_hw, preprocess.mean, preprocess.std)
        report = finetune_backbone(deep, deep.channels[-1], tune_frames, tune_preprocess, self.preset,
                                   seed=seed, progress=progress, first_tap=backbone.stages[0])
        self.finetune_report = report.as_dict()
        finetuned = copy.deepcopy(backbone)
        copy_shared_weights(deep.model, finetuned.model)
        finetuned.eval()
        self.finetuned_backbone = finetuned  # the candidate, kept or not (bench/reb_ablation.py scores both)
        if len(heldout):
            embedding = self.embedding(tuple(backbone.channels)).eval()
            validation = validate_finetune(backbone, finetuned, embedding, preprocess,
                                           lambda features: self.head(self.fit(FitInputs(features))),
                                           frames[tuned], frames[heldout], seed)
            self.finetune_report["validation"] = validation.as_dict()
            self._say(f"reb: {validation.summary()}")
            self._shipped(validation.kept, validation.decision.reason)
            if validation.kept != "finetuned":
                backbone.weights_source = (f"{backbone.weights_source} (reb:{self.preset} fine-tune not shipped: "
                                           "no clear gain on held-out synthetic defects)")
                return PreparedBackbone(backbone, {"finetune": self.finetune_report})
        elif self.validate:
            self._say(f"reb: only {len(frames)} fit images, none held out: the fine-tuned weights are kept "
                      "unchecked")
            self._shipped("finetuned", f"unchecked: only {len(frames)} fit images, too few to hold any out")
        else:
            self._shipped("finetuned", "unchecked: validate=False")
        finetuned.weights_source = f"finetuned(reb:{self.preset}) from {backbone.weights_source}"
        finetuned.weights_sha256 = state_dict_sha256(finetuned.model)
        return PreparedBackbone(finetuned, {"finetune": self.finetune_report})

    def _shipped(self, kept: str, reason: str) -> None:
        self.finetune_report["shipped"] = kept
        self.finetune_report["shipped_reason"] = reason

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)
