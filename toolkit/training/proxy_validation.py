r"""Does the fine-tuned backbone detect defects better than the one it started from? (REB's keep-or-revert check.)

The fine-tune optimises a 7-class proxy task; what the build needs is a better detector. So before the
fine-tuned weights go into an artefact, both backbones are scored on the same held-out synthetic defects:

    fit frames --split--> fine-tune frames (the proxy task trains on these, and they form the validation bank)
                     \--> held-out frames (never seen by the fine-tune): each one good, and once per
                          defect class pasted by a DefectMaker whose seed differs from the fine-tune's
    for each backbone: same embedding + the method's own fit/head (REB: LDKNN) on the bank frames
                       -> image AUROC (held-out good vs held-out defective) and pixel AUROC (defect masks)

The build keeps the fine-tuned weights only if they score strictly higher (image AUROC first, pixel AUROC on
a tie); otherwise it keeps the ImageNet weights and says so. Known bias: the defects come from the same
generator family the fine-tune learned, so this check favours the fine-tuned backbone; it protects against
a fine-tune that hurts even on its own kind of defect, not against one that overfits DefectMaker's look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.toolkit.defectmaker import NUM_CLASSES, DefectMaker
from adtk.toolkit.evaluation.metrics import image_auroc, pixel_auroc

HELDOUT_FRACTION = 0.15
MIN_HELDOUT, MAX_HELDOUT = 4, 32
MAX_BANK_FRAMES = 96  # the validation bank: enough patches for a stable LDKNN, cheap next to the fine-tune
# a seed offset so the validation defects are never the fine-tune's own samples
_VALIDATION_SEED_OFFSET = 7919


def split_heldout(num_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (fine-tune indices, held-out indices). Fewer than 2 x MIN_HELDOUT frames: nothing is held out."""
    order = np.random.default_rng(seed + _VALIDATION_SEED_OFFSET).permutation(num_frames)
    if num_frames < 2 * MIN_HELDOUT:
        return np.sort(order), np.array([], dtype=np.int64)
    heldout = int(np.clip(round(num_frames * HELDOUT_FRACTION), MIN_HELDOUT, MAX_HELDOUT))
    return np.sort(order[heldout:]), np.sort(order[:heldout])


@dataclass(frozen=True)
class SyntheticDefectSet:
    images: np.ndarray  # uint8 [M, H, W, 3]
    labels: np.ndarray  # int [M]: 0 good, 1 defective
    masks: np.ndarray  # bool [M, H, W]: where the defect was pasted (all False for good images)


def synthetic_defect_set(heldout: np.ndarray, seed: int) -> SyntheticDefectSet:
    """Each held-out frame as it is, and once with each DefectMaker class (cut-paste sources: the held-out set)."""
    maker = DefectMaker(seed=seed + _VALIDATION_SEED_OFFSET)
    images, labels, masks = [], [], []
    for index in range(len(heldout)):
        images.append(heldout[index])
        labels.append(0)
        masks.append(np.zeros(heldout.shape[1:3], dtype=bool))
        for label in range(1, NUM_CLASSES):
            sample = maker.make_defect(label, heldout[index], np.ones(heldout.shape[1:3], bool), heldout)
            images.append(sample.image)
            labels.append(1)
            masks.append(sample.mask >= 0.5 * sample.mask.max())  # the visible core of a soft-edged defect
    return SyntheticDefectSet(np.stack(images), np.array(labels), np.stack(masks))


@dataclass(frozen=True)
class ProxyValidation:
    imagenet: dict  # {"image_auroc", "pixel_auroc"} of the starting weights
    finetuned: dict  # the same for the fine-tuned weights
    kept: str  # "finetuned" | "imagenet"
    heldout_images: int
    defect_images: int
    bank_images: int

    def as_dict(self) -> dict:
        return {"kept": self.kept, "imagenet": self.imagenet, "finetuned": self.finetuned,
                "heldout_good_images": self.heldout_images, "heldout_defect_images": self.defect_images,
                "bank_images": self.bank_images, "defects": "DefectMaker, all 6 classes, validation seed"}

    def summary(self) -> str:
        def fmt(r):
            return f"image AUROC {r['image_auroc']:.4f}, pixel AUROC {r['pixel_auroc']:.4f}"
        return (f"held-out synthetic defects ({self.heldout_images} good + {self.defect_images} defective): "
                f"fine-tuned {fmt(self.finetuned)}; starting weights {fmt(self.imagenet)} -> keeping the "
                f"{'fine-tuned' if self.kept == 'finetuned' else 'starting (ImageNet)'} weights")


@torch.no_grad()
def _features(backbone: nn.Module, embedding: nn.Module, normalise, frames: np.ndarray, batch: int = 16) -> np.ndarray:
    backbone.eval()
    out = [embedding(backbone(normalise(torch.from_numpy(frames[i: i + batch])))).numpy()
           for i in range(0, len(frames), batch)]
    return np.concatenate(out)


@torch.no_grad()
def score_detector(backbone: nn.Module, embedding: nn.Module, normalise, fit_head: Callable[[np.ndarray], nn.Module],
                   bank_frames: np.ndarray, defects: SyntheticDefectSet) -> dict:
    """Fit the method on `bank_frames` with this backbone, score the synthetic set -> image and pixel AUROC."""
    head = fit_head(_features(backbone, embedding, normalise, bank_frames)).eval()
    image_scores, patch_maps = [], []
    features = _features(backbone, embedding, normalise, defects.images)
    for i in range(0, len(features), 16):
        output = head(torch.from_numpy(features[i: i + 16]))
        image_scores.append(output.image_score.numpy())
        patch_maps.append(output.patch_scores.numpy())
    maps = torch.from_numpy(np.concatenate(patch_maps))[:, None]
    size = defects.masks.shape[1:]
    pixel = nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    return {"image_auroc": round(image_auroc(np.concatenate(image_scores), defects.labels), 4),
            "pixel_auroc": round(pixel_auroc(pixel, defects.masks), 4)}


def validate_finetune(imagenet_backbone: nn.Module, finetuned_backbone: nn.Module, embedding: nn.Module,
                      normalise, fit_head: Callable[[np.ndarray], nn.Module], bank_frames: np.ndarray,
                      heldout_frames: np.ndarray, seed: int) -> ProxyValidation:
    """Score both backbones on the same held-out synthetic defects; keep the fine-tuned one only if it is better."""
    bank = bank_frames[np.random.default_rng(seed).permutation(len(bank_frames))[:MAX_BANK_FRAMES]]
    defects = synthetic_defect_set(heldout_frames, seed)
    before = score_detector(imagenet_backbone, embedding, normalise, fit_head, bank, defects)
    after = score_detector(finetuned_backbone, embedding, normalise, fit_head, bank, defects)
    better = (after["image_auroc"], after["pixel_auroc"]) > (before["image_auroc"], before["pixel_auroc"])
    return ProxyValidation(before, after, "finetuned" if better else "imagenet", int((defects.labels == 0).sum()),
                           int(defects.labels.sum()), len(bank))
