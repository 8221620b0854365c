r"""Does the fine-tuned backbone detect defects better than the one it started from? (REB's keep-or-revert check.)

The fine-tune optimises a 7-class proxy task; what the build needs is a better detector. So before the
fine-tuned weights go into an artefact, both backbones are scored on the same held-out synthetic defects:

    fit frames --split--> fine-tune frames (the proxy task trains on these, and they form the validation bank)
                     \--> held-out frames (never seen by the fine-tune): each one good, and once per
                          defect class pasted by a DefectMaker whose seed differs from the fine-tune's
    for each backbone: same embedding + the method's own fit/head (REB: LDKNN) on the bank frames
                       -> image AUROC (held-out good vs held-out defective) and pixel AUROC (defect masks)

The build keeps the fine-tuned weights only with a clear image-level gain AND no pixel-level loss:

    image:  the paired cluster bootstrap (resample held-out frames with replacement, each with its good image
            and its defects; both backbones scored on the same resample) gives the distribution of
            gain = AUROC(fine-tuned) - AUROC(starting). Keep only if its lower CONFIDENCE quantile is > 0, i.e.
            the margin is the validation's own noise (few held-out frames = wide interval = revert), not a
            number tuned on one data set.
    pixel:  pixel AUROC(fine-tuned) >= pixel AUROC(starting) (point estimate; a bootstrap over ~15M pixels
            would cost more than the fine-tune, and "not worse" is the side this check guards).

Otherwise it keeps the ImageNet weights, so `--method reb` falls back to exactly LDKNN, and says why.
Known bias: the defects come from the same generator family the fine-tune learned, so this check favours the
fine-tuned backbone; it protects against a fine-tune that hurts even on its own kind of defect, not against
one that overfits DefectMaker's look (the bootstrap margin narrows that gap, it does not close it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.toolkit.defectmaker import NUM_CLASSES, DefectMaker
from adtk.toolkit.evaluation.metrics import image_auroc, pixel_auroc
from adtk.toolkit.trunk_runner import TrunkRunner

HELDOUT_FRACTION = 0.15
MIN_HELDOUT, MAX_HELDOUT = 4, 32
MAX_BANK_FRAMES = 96  # the validation bank: enough patches for a stable LDKNN, cheap next to the fine-tune
BOOTSTRAP_RESAMPLES = 2000
# one-sided 95%: the fine-tune must beat the starting weights in 95% of the paired resamples
CONFIDENCE = 0.95
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
    groups: np.ndarray  # int [M]: the held-out frame each image was made from (the bootstrap's unit)


def synthetic_defect_set(heldout: np.ndarray, seed: int) -> SyntheticDefectSet:
    """Each held-out frame as it is, and once with each DefectMaker class (cut-paste sources: the held-out set)."""
    maker = DefectMaker(seed=seed + _VALIDATION_SEED_OFFSET)
    images, labels, masks, groups = [], [], [], []
    for index in range(len(heldout)):
        groups.extend([index] * NUM_CLASSES)
        images.append(heldout[index])
        labels.append(0)
        masks.append(np.zeros(heldout.shape[1:3], dtype=bool))
        for label in range(1, NUM_CLASSES):
            sample = maker.make_defect(label, heldout[index], np.ones(heldout.shape[1:3], bool), heldout)
            images.append(sample.image)
            labels.append(1)
            masks.append(sample.mask >= 0.5 * sample.mask.max())  # the visible core of a soft-edged defect
    return SyntheticDefectSet(np.stack(images), np.array(labels), np.stack(masks), np.array(groups))


def paired_bootstrap_auroc_gain(before: np.ndarray, after: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """-> [resamples] image AUROC(after) - AUROC(before), each on the same resample of the groups (held-out
    frames, drawn with replacement). Exact per resample: with c_g the count of group g, AUROC = sum over
    (good i, defective j) of c_g(i) c_g(j) H(s_j - s_i) / (#good x #defective), H = 1, 0.5 on a tie, 0; the
    pair sums are aggregated per group pair once, so each resample is a [G] x [G, G] x [G] product."""
    labels, groups = np.asarray(labels).astype(bool), np.asarray(groups)
    ids, groups = np.unique(groups, return_inverse=True)
    n_groups = len(ids)
    good_per_group = np.bincount(groups[~labels], minlength=n_groups).astype(np.float64)
    bad_per_group = np.bincount(groups[labels], minlength=n_groups).astype(np.float64)

    def pair_sums(scores):
        s = np.asarray(scores, dtype=np.float64)
        h = (s[labels][None, :] > s[~labels][:, None]) + 0.5 * (s[labels][None, :] == s[~labels][:, None])
        sums = np.zeros((n_groups, n_groups))
        np.add.at(sums, (groups[~labels][:, None], groups[labels][None, :]), h)
        return sums

    counts = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples)
    counts = counts.astype(np.float64)
    pairs = (counts @ good_per_group) * (counts @ bad_per_group)
    valid = pairs > 0  # a resample without good (or defective) images has no AUROC: dropped
    gain = np.einsum("bg,gh,bh->b", counts, pair_sums(after) - pair_sums(before), counts)
    return gain[valid] / pairs[valid]


@dataclass(frozen=True)
class KeepDecision:
    kept: str  # "finetuned" | "imagenet"
    reason: str
    image_gain: float  # point estimate, fine-tuned - starting
    image_gain_low: float  # the bootstrap's lower CONFIDENCE quantile of that gain
    pixel_gain: float


def keep_or_revert(before: dict, after: dict, gains: np.ndarray) -> KeepDecision:
    """The rule in the module docstring: clear image-level gain (bootstrap lower bound > 0) and pixel not worse."""
    image_gain = after["image_auroc"] - before["image_auroc"]
    pixel_gain = after["pixel_auroc"] - before["pixel_auroc"]
    low = float(np.quantile(gains, 1.0 - CONFIDENCE)) if len(gains) else float("-inf")
    if not low > 0:
        kept, reason = "imagenet", (f"image AUROC gain {image_gain:+.4f} is not clear of the validation noise "
                                    f"({CONFIDENCE:.0%} bootstrap lower bound {low:+.4f} <= 0)")
    elif pixel_gain < 0:
        kept, reason = "imagenet", f"pixel AUROC is worse ({pixel_gain:+.4f})"
    else:
        kept, reason = "finetuned", (f"image AUROC gain {image_gain:+.4f} ({CONFIDENCE:.0%} bootstrap lower bound "
                                     f"{low:+.4f} > 0), pixel AUROC gain {pixel_gain:+.4f} >= 0")
    return KeepDecision(kept, reason, round(image_gain, 4), round(low, 4), round(pixel_gain, 4))


@dataclass(frozen=True)
class ProxyValidation:
    imagenet: dict  # {"image_auroc", "pixel_auroc"} of the starting weights
    finetuned: dict  # the same for the fine-tuned weights
    decision: KeepDecision
    heldout_images: int
    defect_images: int
    bank_images: int

    @property
    def kept(self) -> str:
        return self.decision.kept

    def as_dict(self) -> dict:
        return {"kept": self.kept, "reason": self.decision.reason, "imagenet": self.imagenet,
                "finetuned": self.finetuned, "image_gain": self.decision.image_gain,
                "image_gain_lower_bound": self.decision.image_gain_low, "pixel_gain": self.decision.pixel_gain,
                "rule": f"keep the fine-tune only if the {CONFIDENCE:.0%} paired-bootstrap lower bound of the image "
                        f"AUROC gain ({BOOTSTRAP_RESAMPLES} resamples of held-out frames) is > 0 and pixel AUROC "
                        "is not lower",
                "heldout_good_images": self.heldout_images, "heldout_defect_images": self.defect_images,
                "bank_images": self.bank_images, "defects": "DefectMaker, all 6 classes, validation seed"}

    def summary(self) -> str:
        def fmt(r):
            return f"image AUROC {r['image_auroc']:.4f}, pixel AUROC {r['pixel_auroc']:.4f}"
        return (f"held-out synthetic defects ({self.heldout_images} good + {self.defect_images} defective): "
                f"fine-tuned {fmt(self.finetuned)}; starting weights {fmt(self.imagenet)} -> shipping the "
                f"{'fine-tuned' if self.kept == 'finetuned' else 'starting (ImageNet)'} weights: "
                f"{self.decision.reason}")


@torch.no_grad()
def _features(trunk: TrunkRunner, normalise, frames: np.ndarray, batch: int = 16) -> np.ndarray:
    trunk.expect(len(frames))
    return np.concatenate([trunk(normalise(torch.from_numpy(frames[i: i + batch])))
                           for i in range(0, len(frames), batch)])


@torch.no_grad()
def score_detector(backbone: nn.Module, embedding: nn.Module, normalise, fit_head: Callable[[np.ndarray], nn.Module],
                   bank_frames: np.ndarray, defects: SyntheticDefectSet) -> dict:
    """Fit the method on `bank_frames` with this backbone, score the synthetic set -> image and pixel AUROC
    (and "image_scores" [M], for the paired bootstrap). Features through the build's trunk runner (onnxruntime,
    checked against torch on its first batch): eager torch took ~20 of a REB build's ~40-s validation."""
    trunk = TrunkRunner(backbone, embedding)  # puts backbone and embedding in eval mode
    head = fit_head(_features(trunk, normalise, bank_frames)).eval()
    image_scores, patch_maps = [], []
    features = _features(trunk, normalise, defects.images)
    for i in range(0, len(features), 16):
        output = head(torch.from_numpy(features[i: i + 16]))
        image_scores.append(output.image_score.numpy())
        patch_maps.append(output.patch_scores.numpy())
    maps = torch.from_numpy(np.concatenate(patch_maps))[:, None]
    size = defects.masks.shape[1:]
    pixel = nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    scores = np.concatenate(image_scores)
    return {"image_auroc": round(image_auroc(scores, defects.labels), 4),
            "pixel_auroc": round(pixel_auroc(pixel, defects.masks), 4), "image_scores": scores}


def validate_finetune(imagenet_backbone: nn.Module, finetuned_backbone: nn.Module, embedding: nn.Module,
                      normalise, fit_head: Callable[[np.ndarray], nn.Module], bank_frames: np.ndarray,
                      heldout_frames: np.ndarray, seed: int) -> ProxyValidation:
    """Score both backbones on the same held-out synthetic defects; keep the fine-tuned one only if it is clearly
    better (keep_or_revert)."""
    bank = bank_frames[np.random.default_rng(seed).permutation(len(bank_frames))[:MAX_BANK_FRAMES]]
    defects = synthetic_defect_set(heldout_frames, seed)
    before = score_detector(imagenet_backbone, embedding, normalise, fit_head, bank, defects)
    after = score_detector(finetuned_backbone, embedding, normalise, fit_head, bank, defects)
    gains = paired_bootstrap_auroc_gain(before.pop("image_scores"), after.pop("image_scores"), defects.labels,
                                        defects.groups, seed=seed)
    return ProxyValidation(before, after, keep_or_revert(before, after, gains), int((defects.labels == 0).sum()),
                           int(defects.labels.sum()), len(bank))
