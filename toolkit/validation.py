"""Synthetic-defect validation: held-out good images, each also shown with a synthetic defect pasted in.

    data = synthetic_validation(good_images, seed=0)       # uint8 [H, W, 3] images never fitted on
    data.frames, data.labels (0 good / 1 defect), data.masks (bool [H, W]), data.kinds

Used wherever a build must judge a model without labelled defects: the recipe search ranks candidates
on it (toolkit/recipe_search.py) and the compiler's precision gate compares fp16/INT8 with fp32 on it
(toolkit/sizing.py compile_check_data) when the data set has no `defects/` folder. It never reads the
test split: a model chosen or gated on the test split would report a test score it was tuned on.

Every held-out good image appears as itself (label 0) and with one or more defects (label 1, one per
frame): each pair differs only in the defect, so the AUROC measures how well the model sees defects, not which good
images happen to look unusual. The defect kinds cycle through
  - DefectMaker's six (REB, seed 004 §3: Bezier rect / scar / clump, cut-paste or noise fill), and
  - thin scratches and branching cracks 1-3 px wide at the image's own resolution (what a 256 px
    squashed input loses on tall frames: these are the defects that reward input geometry and tiling).
One seeded numpy Generator drives every draw, so the same images and seed give the same set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from adtk.runtime.errors import DataError
from adtk.toolkit.defectmaker import NUM_CLASSES, DefectMaker

THIN_KINDS = ("scratch", "crack")
DEFECTMAKER_KINDS = tuple(f"defectmaker_{label}" for label in range(1, NUM_CLASSES))
ALL_KINDS = (*DEFECTMAKER_KINDS, *THIN_KINDS)
# Half thin (1-3 px) defects, half DefectMaker's blobs: thin defects are the ones a model input too coarse for
# the frame misses, so they must weigh in a ranking of input geometries as much as area defects do.
DEFAULT_MIX = (*DEFECTMAKER_KINDS, *THIN_KINDS, *THIN_KINDS, *THIN_KINDS)
MIN_VALIDATION_IMAGES = 8  # good images held out for validation: fewer gives an AUROC too coarse to rank on


@dataclass(frozen=True)
class SyntheticValidation:
    frames: list  # uint8 [H, W, 3]
    labels: np.ndarray  # int64 [N]: 0 = the good image, 1 = the same image with a synthetic defect
    masks: list  # bool [H, W]: the defect's pixels (all False for goods)
    kinds: tuple[str, ...]  # "good" or the defect kind of each frame
    description: str

    def __len__(self) -> int:
        return len(self.frames)


def _polyline(start: np.ndarray, length: float, rng: np.random.Generator, bend: float) -> np.ndarray:
    """Points of a gently bending line of about `length` px from `start` (row, col), in steps of ~4 px."""
    steps = max(2, int(length / 4))
    heading = rng.uniform(0, 2 * np.pi)
    points = [start.astype(np.float64)]
    for _ in range(steps):
        heading += rng.normal(0.0, bend)
        points.append(points[-1] + 4.0 * np.array([np.sin(heading), np.cos(heading)]))
    return np.array(points)


def thin_defect_mask(kind: str, image_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """bool [H, W]: a scratch (one bending line) or a crack (a jagged line with 1-3 branches), 1-3 px wide.

    Lengths are fractions of the image's longer side (10-40 %), widths are absolute pixels: a defect as
    thin on a 1250 px frame as on a 250 px one, which is what a downscaled model input loses."""
    height, width = image_hw
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    start = np.array([rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width])
    length = rng.uniform(0.1, 0.4) * max(height, width)
    line_width = int(rng.integers(1, 4))
    strokes = [_polyline(start, length, rng, bend=0.15 if kind == "scratch" else 0.6)]
    if kind == "crack":
        for _ in range(int(rng.integers(1, 4))):
            fork = strokes[0][int(rng.integers(len(strokes[0])))]
            strokes.append(_polyline(fork, length * rng.uniform(0.2, 0.5), rng, bend=0.6))
    elif kind != "scratch":
        raise ValueError(f"unknown thin defect kind {kind!r} (known: {', '.join(THIN_KINDS)})")
    for stroke in strokes:
        draw.line([(float(c), float(r)) for r, c in stroke], fill=255, width=line_width, joint="curve")
    return np.asarray(canvas) > 0


def paint_thin_defect(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darken (cracks, usually) or lighten the masked pixels by 25-60 % of the image's grey range: visible,
    not glaring, whatever the image's brightness."""
    grey = image.astype(np.float32).mean(-1)
    spread = max(float(np.percentile(grey, 99) - np.percentile(grey, 1)), 40.0)
    delta = rng.uniform(0.25, 0.6) * spread * (-1.0 if rng.random() < 0.75 else 1.0)
    out = image.astype(np.float32)
    out[mask] += delta
    return np.clip(out, 0, 255).astype(np.uint8)


def synthetic_validation(good_images, seed: int = 0, kinds: tuple[str, ...] = DEFAULT_MIX,
                         source: str = "held-out good images",
                         min_images: int = MIN_VALIDATION_IMAGES, defects_per_image: int = 1) -> SyntheticValidation:
    """Each good image (uint8 [H, W, 3]) once as is and `defects_per_image` times with a synthetic defect: of the
    next `defects_per_image` entries of `kinds` from a seeded start per image (so the set keeps the mix's
    proportions; an image's defects differ in kind where consecutive entries do). DefectMaker's cut-paste fills
    come from the same held-out images."""
    images = [np.ascontiguousarray(np.asarray(image, dtype=np.uint8)) for image in good_images]
    if len(images) < min_images:
        raise DataError(f"synthetic-defect validation needs at least {min_images} held-out good images, "
                        f"got {len(images)}")
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(ALL_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown defect kinds {unknown} (known: {', '.join(ALL_KINDS)})")
    if defects_per_image < 1:
        raise ValueError(f"defects_per_image must be at least 1, got {defects_per_image}")
    rng = np.random.default_rng(seed)
    maker = DefectMaker(seed=int(rng.integers(2**31)))
    starts = rng.permutation(len(images))
    frames, labels, masks, used_kinds = [], [], [], []
    for image, start in zip(images, starts):
        frames.append(image)
        labels.append(0)
        masks.append(np.zeros(image.shape[:2], dtype=bool))
        used_kinds.append("good")
        for step in range(defects_per_image):
            kind = kinds[(start + step) % len(kinds)]
            defective, mask = _paste_defect(image, kind, rng, maker)
            frames.append(np.ascontiguousarray(defective))
            labels.append(1)
            masks.append(mask)
            used_kinds.append(kind)
    each = "a synthetic defect" if defects_per_image == 1 else f"{defects_per_image} synthetic defects"
    return SyntheticValidation(frames, np.asarray(labels, dtype=np.int64), masks, tuple(used_kinds),
                               f"{len(images)} {source}, each also with {each} "
                               f"({', '.join(sorted(set(used_kinds) - {'good'}))}; seed {seed})")


def _paste_defect(image: np.ndarray, kind: str, rng: np.random.Generator, maker: DefectMaker):
    """-> (the image with one synthetic defect of `kind`, its bool mask)."""
    if kind in THIN_KINDS:
        mask = thin_defect_mask(kind, image.shape[:2], rng)
        return paint_thin_defect(image, mask, rng), mask
    label = DEFECTMAKER_KINDS.index(kind) + 1
    # cut-paste from the image itself: held-out images differ in size, and a fill box must fit its source
    sample = maker.make_defect(label, image, np.ones(image.shape[:2], dtype=bool), [image])
    mask = sample.mask > 0.1
    if not mask.any():  # a fill identical to what it covers would be a "defect" with no pixels
        mask = sample.mask > 0
    return sample.image, mask


def load_good_images(samples, skip_bad: bool, warn=None) -> list[np.ndarray]:
    from adtk.toolkit.data import iter_images

    return [image for _, image in iter_images(samples, skip_bad=skip_bad, on_warning=warn)]
