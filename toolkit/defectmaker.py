"""DefectMaker (REB, seed 004 §3): synthetic defects for the self-supervised 7-class proxy task.

A defect is (shape, fill, placement, fusion). Every source image gives 7 images: the augmented original
(class 0) and one sample of each of the 6 makers below (classes 1-6), so every batch is class-balanced.

    shape:  Bezier-rect, Bezier-scar, Bezier-clump          (spec §3.2-3.3)
    fill:   cut-paste from a training image, or colour noise (spec §3.4)
    place:  centred on a random salient pixel, clamped inside (spec §3.5; no saliency model -> whole image)
    fuse:   colour-jittered fill, hard or soft (eroded + blurred) mask x weight, alpha composite (spec §3.6)

numpy + Pillow + scipy + scikit-image only; every random draw comes from one seeded numpy Generator, so a
DefectMaker with the same seed and the same inputs makes the same images. Sizes in the spec are for
256 x 256 images; areas are fractions of the image, and the scar's pixel sizes scale with min(H, W) / 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage
from skimage.draw import polygon, polygon_perimeter
from skimage.morphology import disk

# class id -> (shape, fill, fuse weight range, blur kernel b); spec §3.7, configuration `dm_com6`
DEFECT_CLASSES: tuple[tuple[str, str, str, tuple[float, float], int], ...] = (
    ("normal", "", "", (0.0, 0.0), 0),
    ("bezier_rect_cutpaste", "rect", "cutpaste", (1.0, 1.0), 5),
    ("bezier_scar_cutpaste", "scar", "cutpaste", (1.0, 1.0), 3),
    ("bezier_clump_cutpaste", "clump", "cutpaste", (0.5, 1.0), 3),
    ("bezier_rect_noise", "rect", "noise", (1.0, 1.0), 5),
    ("bezier_scar_noise", "scar", "noise", (1.0, 1.0), 3),
    ("bezier_clump_noise", "clump", "noise", (0.5, 1.0), 3),
)
CLASS_NAMES = tuple(c[0] for c in DEFECT_CLASSES)
NUM_CLASSES = len(DEFECT_CLASSES)

# spec §3.1: 9 entries, so transverse and left-right flip are drawn twice as often; no vertical flip
_TRANSPOSES = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
               Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.TRANSVERSE,
               Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_LEFT_RIGHT)
# A transpose that swaps the sides turns an H x W frame into W x H: on a non-square frame (the default input of tall
# parts, toolkit/geometry.py) each is replaced by a side-keeping flip or rotation, so a training batch has one shape
# (the artefact's input) and no image shows the part turned sideways; the draw is the same, so square images (the
# spec's) get exactly the spec's transposes.
_SIDE_KEEPING = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_180,
                 Image.Transpose.ROTATE_270: Image.Transpose.FLIP_TOP_BOTTOM,
                 Image.Transpose.TRANSPOSE: Image.Transpose.FLIP_TOP_BOTTOM,
                 Image.Transpose.TRANSVERSE: Image.Transpose.ROTATE_180}
_NOISE_MEANS = np.arange(50, 191, 10)  # spec §3.4: 15 x 10 x 3 x 5 = 2250 combinations
_NOISE_FLUCTS = np.arange(0, 46, 5)
_NOISE_SCALES = (1, 2, 4)
_NOISE_ASPECTS = (0.25, 0.5, 1.0, 2.0, 4.0)
_MAX_ATTEMPTS = 4  # spec §3.6.5


@dataclass(frozen=True)
class DefectSample:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # float32 [H, W] in [0, 1]: the blend weight of the defect (0 for class 0)
    label: int  # 0 = normal, 1..6 = DEFECT_CLASSES index


def bezier_mask(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """bool [height, width]: a filled closed piecewise-cubic Bezier blob spanning the box (spec §3.2)."""
    num_points = int(rng.choice((5, 6)))
    smoothing = float(rng.choice((0.2, 0.3, 0.4)))
    points = rng.integers(0, 100, size=(num_points, 2)).astype(np.float64)
    centre = points.mean(0)
    points = points[np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]))]
    prev_pts, next_pts = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    mid_in, mid_out = (prev_pts + points) / 2, (points + next_pts) / 2
    len_in = np.linalg.norm(points - prev_pts, axis=1, keepdims=True)
    len_out = np.linalg.norm(next_pts - points, axis=1, keepdims=True)
    split = mid_in + (mid_out - mid_in) * len_in / np.maximum(len_in + len_out, 1e-9)
    shift = points - split  # move the midpoint segment so its split point sits on the vertex
    ctrl_in = mid_in + shift + smoothing * (points - mid_in - shift)
    ctrl_out = mid_out + shift + smoothing * (points - mid_out - shift)
    t = np.linspace(0.0, 1.0, 12)[:, None]
    polyline = []
    for i in range(num_points):
        j = (i + 1) % num_points
        curve = ((1 - t) ** 3 * points[i] + 3 * (1 - t) ** 2 * t * ctrl_out[i]
                 + 3 * (1 - t) * t ** 2 * ctrl_in[j] + t ** 3 * points[j])
        polyline.append(curve[:1] if rng.random() < 0.5 else curve[:-1])  # roughening: chord or curve
    poly = np.concatenate(polyline)
    span = np.maximum(poly.max(0) - poly.min(0), 1e-9)
    poly = ((poly - poly.min(0)) / span * [width - 1, height - 1]).astype(np.int64)
    mask = np.zeros((height, width), dtype=bool)
    # skimage's polygon() leaves out part of the boundary; add the perimeter (as cv2.fillPoly draws it)
    mask[polygon(poly[:, 1], poly[:, 0], mask.shape)] = True
    mask[polygon_perimeter(poly[:, 1], poly[:, 0], mask.shape)] = True
    return mask


def _cutpaste_box(image_hw, rng, aspect_max: float) -> tuple[int, int]:
    """(width, height) of a box with area U(0.02, 0.15) of the image and log-uniform aspect (spec §3.3)."""
    height, width = image_hw
    area = rng.uniform(0.02, 0.15) * height * width
    aspect = float(np.exp(rng.uniform(np.log(1 / aspect_max), np.log(aspect_max))))
    box_w = int(np.clip(round(np.sqrt(area * aspect)), 1, width))
    box_h = int(np.clip(round(np.sqrt(area / aspect)), 1, height))
    return box_w, box_h


def make_shape(kind: str, image_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """bool [h, w] shape mask of one kind ("rect", "scar", "clump"), sized for an image of image_hw."""
    if kind == "rect":
        return bezier_mask(*_cutpaste_box(image_hw, rng, 3.3), rng)
    if kind == "scar":
        scale = min(image_hw) / 256.0
        box_w = max(2, round(int(rng.integers(7, 22)) * scale))
        box_h = max(2, round(int(rng.integers(15, 31)) * scale))
        shape = Image.fromarray(bezier_mask(box_w, box_h, rng).astype(np.uint8) * 255)
        rotated = np.asarray(shape.rotate(int(rng.integers(-45, 46)), Image.NEAREST, expand=True)) > 0
        rows, cols = np.nonzero(rotated)
        if rows.size == 0:
            return rotated[:0, :0]
        return rotated[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    if kind == "clump":
        box_w, box_h = _cutpaste_box(image_hw, rng, 3.0)
        cell, aspect = rng.uniform(5, 7), float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        # spec P13: the low-res grid uses the box width for both dimensions (replicated)
        grid = (max(1, int(box_w / cell * aspect)), max(1, int(box_w / cell / aspect)))
        noise = rng.integers(77, 178, size=(grid[1], grid[0])).astype(np.uint8)
        blobs = np.asarray(Image.fromarray(noise).resize((box_w, box_h), Image.BICUBIC)) > 138
        return blobs & bezier_mask(box_w, box_h, rng)
    raise ValueError(f"unknown shape kind {kind!r}")


def noise_fill(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [height, width, 3]: blocky colour noise from the spec's 2250-entry grid (spec §3.4)."""
    mean, fluct = int(rng.choice(_NOISE_MEANS)), int(rng.choice(_NOISE_FLUCTS))
    scale, aspect = int(rng.choice(_NOISE_SCALES)), float(rng.choice(_NOISE_ASPECTS))
    low_w, low_h = max(1, int(width / scale * aspect)), max(1, int(width / scale / aspect))
    noise = rng.integers(max(mean - fluct, 0), min(mean + fluct, 254) + 1, size=(low_h, low_w, 3))
    return np.asarray(Image.fromarray(noise.astype(np.uint8)).resize((width, height), Image.BICUBIC))


def random_salient_pixel(salient: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    rows, cols = np.nonzero(salient)
    if rows.size == 0:  # an empty saliency map constrains nothing
        return int(rng.integers(salient.shape[0])), int(rng.integers(salient.shape[1]))
    pick = int(rng.integers(rows.size))
    return int(rows[pick]), int(cols[pick])


def box_around(centre: tuple[int, int], box_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
    """Top-left (row, col) of a box centred on `centre`, shifted to lie fully inside the image."""
    top = min(max(centre[0] - box_hw[0] // 2, 0), image_hw[0] - box_hw[0])
    left = min(max(centre[1] - box_hw[1] // 2, 0), image_hw[1] - box_hw[1])
    return top, left


def colour_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter in random order (torchvision ColorJitter on PIL)."""
    pil = Image.fromarray(image)
    for op in rng.permutation(4):
        if op == 0:
            pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(1 - strength, 1 + strength))
        elif op == 1:
            pil = ImageEnhance.Contrast(pil).enhance(rng.uniform(1 - strength, 1 + strength))
        elif op == 2:
            pil = ImageEnhance.Color(pil).enhance(rng.uniform(1 - strength, 1 + strength))
        else:
            hsv = np.array(pil.convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.uniform(-strength, strength) * 255)) % 256
            pil = Image.fromarray(hsv, "HSV").convert("RGB")
    return np.asarray(pil)


def soft_mask(shape: np.ndarray, kernel: int) -> np.ndarray:
    """float [h, w] in [0, 1]: erode with an elliptical element of size b, Gaussian blur (b x b, sigma b)."""
    eroded = ndimage.binary_erosion(shape, structure=disk(kernel // 2)).astype(np.float32)
    # truncate so the kernel is b taps wide, as cv2.GaussianBlur(mask, (b, b), b); 'mirror' = cv2's default border
    return ndimage.gaussian_filter(eroded, sigma=kernel, truncate=(kernel // 2) / kernel, mode="mirror")


class DefectMaker:
    """Seeded generator of the 7-variant sets used by the REB proxy task.

    make_variants(index, images, saliency=None) -> 7 DefectSample (labels 0..6) for images[index];
    `images` (uint8 [N, H, W, 3] or a list of such arrays) is also the cut-paste source pool.
    `saliency` (optional, per image, [H, W] float): pixels > saliency_threshold may host a defect centre;
    without it every pixel may (spec §2: textures and LOCO use the whole image).
    """

    def __init__(self, seed: int = 0, saliency_threshold: float = 0.0, blur_prob: float = 0.5,
                 jitter_strength: float = 0.1):
        self.rng = np.random.default_rng(seed)
        self.saliency_threshold = float(saliency_threshold)
        self.blur_prob = float(blur_prob)
        self.jitter_strength = float(jitter_strength)

    def augment(self, image: np.ndarray, salient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source augmentation (spec §3.1): colour jitter, then one of the 9 transposes on image and saliency (on a
        non-square image, side-swapping ones are replaced: _SIDE_KEEPING)."""
        image = colour_jitter(image, self.rng, self.jitter_strength)
        transpose = _TRANSPOSES[int(self.rng.integers(len(_TRANSPOSES)))]
        if image.shape[0] != image.shape[1]:
            transpose = _SIDE_KEEPING.get(transpose, transpose)
        if transpose is not None:
            image = np.asarray(Image.fromarray(image).transpose(transpose))
            salient = np.asarray(Image.fromarray(salient.astype(np.uint8)).transpose(transpose)) > 0
        return image, salient

    def _salient(self, saliency, index: int, image_hw) -> np.ndarray:
        if saliency is None:
            return np.ones(image_hw, dtype=bool)
        return np.asarray(saliency[index]) > self.saliency_threshold

    def make_variants(self, index: int, images, saliency=None) -> list[DefectSample]:
        base, salient = self.augment(np.asarray(images[index]), self._salient(saliency, index, images[index].shape[:2]))
        samples = [DefectSample(base, np.zeros(base.shape[:2], np.float32), 0)]
        for label in range(1, NUM_CLASSES):
            samples.append(self.make_defect(label, base, salient, images, saliency))
        return samples

    def make_defect(self, label: int, image: np.ndarray, salient: np.ndarray, images, saliency=None) -> DefectSample:
        _, shape_kind, fill_kind, weight_range, kernel = DEFECT_CLASSES[label]
        for _ in range(_MAX_ATTEMPTS):  # spec §3.6.5: an empty result is made again, at most 4 times
            shape = make_shape(shape_kind, image.shape[:2], self.rng)
            if not shape.any() or shape.shape[0] > image.shape[0] or shape.shape[1] > image.shape[1]:
                continue
            alpha = soft_mask(shape, kernel) if self.rng.random() < self.blur_prob else shape.astype(np.float32)
            if alpha.max() > 0:  # erosion can swallow a small scar whole
                break
        else:  # still empty: a filled box keeps the class meaningful
            shape = np.ones((max(2, image.shape[0] // 8), max(2, image.shape[1] // 8)), dtype=bool)
            alpha = shape.astype(np.float32)
        box_h, box_w = shape.shape
        fill = self._fill(fill_kind, box_w, box_h, images, saliency)
        top, left = box_around(random_salient_pixel(salient, self.rng), (box_h, box_w), image.shape[:2])
        fill = colour_jitter(fill, self.rng, self.jitter_strength)
        alpha = alpha * self.rng.uniform(*weight_range)
        out = image.copy()
        region = out[top: top + box_h, left: left + box_w].astype(np.float16)  # spec §3.6.3: float16 blend
        a = alpha.astype(np.float16)[..., None]
        out[top: top + box_h, left: left + box_w] = (a * fill.astype(np.float16) + (1 - a) * region).astype(np.uint8)
        mask = np.zeros(image.shape[:2], np.float32)
        mask[top: top + box_h, left: left + box_w] = alpha
        return DefectSample(out, mask, label)

    def _fill(self, kind: str, width: int, height: int, images, saliency) -> np.ndarray:
        if kind == "noise":
            return noise_fill(width, height, self.rng)
        source_index = int(self.rng.integers(len(images)))  # may be the target image itself (spec §3.4)
        source = np.asarray(images[source_index])
        source, salient = self.augment(source, self._salient(saliency, source_index, source.shape[:2]))
        top, left = box_around(random_salient_pixel(salient, self.rng), (height, width), source.shape[:2])
        return source[top: top + height, left: left + width]
