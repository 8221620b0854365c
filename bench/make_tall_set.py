"""Make a stand-in for the held-back set this team does not have: tall grayscale frames (about 500 px wide,
1250 px tall) whose defects are thin cracks (1-3 px wide) covering well under 1% of the frame, in the MVTec
layout (train/good, test/good, test/crack, ground_truth/crack/*_mask.png) that `adtk build/eval` read.

Two sources of good surface, so nothing is tuned to one texture:
  magnetic-tile  good magnetic-tile images (read from --mt-root, never copied into the repo) resized to the frame
                 width and stacked into a tall strip; the train and test frames use disjoint source images.
  brick|gravel|grass  the demo's CC0 texture photos (toolkit/demo.py: skimage.data, offline), mirrored to cover
                 the frame, random offset and flips per frame, grayscale.

Cracks: a random walk of 8-24 px segments turning by up to 30 degrees per step, 60-400 px long, drawn 1-3 px wide,
darkening the surface to 50-80% of its value (edge softened by a 0.6 px blur of the drawn line); the mask is the
drawn line. Every frame is drawn from a numpy Generator seeded by (seed, split, index): same seed, same files.

    python bench/make_tall_set.py --source magnetic-tile --out /tmp/geometry/tall-mt
    python bench/make_tall_set.py --source gravel --out /tmp/geometry/tall-gravel
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SPLITS = {"train": 0, "test_good": 1, "test_crack": 2}


def frame_size(rng: np.random.Generator, height: int, width: int) -> tuple[int, int]:
    """Frame (H, W) within +/-3% of the nominal size: real frames from one line differ a little."""
    return int(round(height * rng.uniform(0.97, 1.03))), int(round(width * rng.uniform(0.97, 1.03)))


class MagneticTileStrips:
    """Good magnetic-tile images resized to the frame width, stacked top to bottom, cut to the frame height."""

    def __init__(self, root: Path, seed: int):
        paths = sorted((root / "train" / "good").glob("*.jpg")) + sorted((root / "train" / "good").glob("*.png"))
        if len(paths) < 20:
            raise SystemExit(f"{root}/train/good: need at least 20 good images, found {len(paths)}")
        order = np.random.default_rng(seed).permutation(len(paths))
        cut = int(0.7 * len(paths))  # train frames from 70% of the images, test frames from the rest
        self.sources = {"train": [paths[i] for i in order[:cut]], "test": [paths[i] for i in order[cut:]]}

    def frame(self, rng, split: str, hw: tuple[int, int]) -> np.ndarray:
        height, width = hw
        pool = self.sources["train" if split == "train" else "test"]
        parts, total = [], 0
        while total < height:
            image = Image.open(pool[int(rng.integers(len(pool)))]).convert("L")
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            scaled = image.resize((width, max(8, round(image.height * width / image.width))), Image.Resampling.BILINEAR)
            parts.append(np.asarray(scaled, dtype=np.float64))
            total += scaled.height
        strip = np.concatenate(parts, axis=0)
        top = int(rng.integers(0, strip.shape[0] - height + 1))
        return strip[top:top + height]


class TextureFrames:
    """A demo texture (CC0, skimage.data) mirrored to cover the frame; random offset and flips."""

    def __init__(self, texture: str):
        import skimage.data

        self.texture = np.asarray(getattr(skimage.data, texture)(), dtype=np.float64)
        if self.texture.ndim == 3:
            self.texture = self.texture.mean(axis=2)

    def frame(self, rng, split: str, hw: tuple[int, int]) -> np.ndarray:
        height, width = hw
        base = self.texture[::-1] if rng.random() < 0.5 else self.texture
        base = base[:, ::-1] if rng.random() < 0.5 else base
        reps = (math.ceil(2 * height / base.shape[0]) + 1, math.ceil(2 * width / base.shape[1]) + 1)
        mirrored = np.pad(base, ((0, base.shape[0] * (reps[0] - 1)), (0, base.shape[1] * (reps[1] - 1))),
                          mode="symmetric")
        top = int(rng.integers(0, mirrored.shape[0] - height))
        left = int(rng.integers(0, mirrored.shape[1] - width))
        gain = rng.uniform(0.92, 1.08)  # slight exposure change between frames
        return mirrored[top:top + height, left:left + width] * gain


def crack_mask(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: one thin crack, a random walk 60-400 px long and 1-3 px wide."""
    height, width = hw
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    length = rng.uniform(60, 400)
    line_width = int(rng.integers(1, 4))
    y, x = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    angle = rng.uniform(0, 2 * math.pi)
    points, walked = [(x, y)], 0.0
    while walked < length:
        step = rng.uniform(8, 24)
        angle += rng.uniform(-math.radians(30), math.radians(30))
        x = float(np.clip(x + step * math.cos(angle), 0, width - 1))
        y = float(np.clip(y + step * math.sin(angle), 0, height - 1))
        points.append((x, y))
        walked += step
    draw.line(points, fill=255, width=line_width, joint="curve")
    return np.asarray(canvas) > 127


def add_cracks(rng: np.random.Generator, surface: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(surface.shape, dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        mask |= crack_mask(rng, surface.shape)
    darkening = rng.uniform(0.50, 0.80)
    soft = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6)),
                      dtype=np.float64) / 255.0
    soft = np.maximum(soft, mask.astype(np.float64))
    return surface * (1.0 - soft * (1.0 - darkening)), mask


def write_png(path: Path, gray: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8), mode="L").save(path)


def make_tall_set(out: Path, source: str, mt_root: Path, num_train: int, num_test_good: int, num_test_crack: int,
                  height: int, width: int, seed: int) -> dict:
    surfaces = MagneticTileStrips(mt_root, seed) if source == "magnetic-tile" else TextureFrames(source)
    if out.exists():
        shutil.rmtree(out)
    coverage = []
    for split, count in (("train", num_train), ("test_good", num_test_good), ("test_crack", num_test_crack)):
        for index in range(count):
            rng = np.random.default_rng([seed, SPLITS[split], index])
            surface = surfaces.frame(rng, split, frame_size(rng, height, width))
            surface = surface + rng.normal(0, 1.5, surface.shape)  # sensor noise
            if split == "train":
                write_png(out / "train" / "good" / f"{index:03d}.png", surface)
            elif split == "test_good":
                write_png(out / "test" / "good" / f"{index:03d}.png", surface)
            else:
                cracked, mask = add_cracks(rng, surface)
                write_png(out / "test" / "crack" / f"{index:03d}.png", cracked)
                write_png(out / "ground_truth" / "crack" / f"{index:03d}_mask.png", mask * 255.0)
                coverage.append(mask.mean())
    (out / "README.txt").write_text(
        f"adtk bench tall-frame set: source {source}, seed {seed}, frames ~{height} x {width} (H x W) grayscale, "
        f"thin synthetic cracks (bench/make_tall_set.py). Crack coverage per defective frame: "
        f"median {100 * np.median(coverage):.3f}%, max {100 * np.max(coverage):.3f}%.\n")
    return {"frames": num_train + num_test_good + num_test_crack,
            "crack_coverage_pct_median": round(100 * float(np.median(coverage)), 3),
            "crack_coverage_pct_max": round(100 * float(np.max(coverage)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", choices=["magnetic-tile", "brick", "gravel", "grass"], default="magnetic-tile")
    parser.add_argument("--mt-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "magnetic-tile")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-test-good", type=int, default=60)
    parser.add_argument("--num-test-crack", type=int, default=60)
    parser.add_argument("--height", type=int, default=1250)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stats = make_tall_set(args.out, args.source, args.mt_root, args.num_train, args.num_test_good,
                          args.num_test_crack, args.height, args.width, args.seed)
    print(f"wrote {args.out}: {stats}")


if __name__ == "__main__":
    main()
