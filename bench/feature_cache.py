"""Backbone stage maps of a whole MVTec-layout data set, extracted once and cached (bench helper).

The bench compares many fits (methods x pollution x seeds); the backbone is frozen, so its stage maps
are computed once with exactly the modules a build uses (FramePreprocess + create_backbone) and every
method's own embedding runs on the cached maps afterwards. Masks are resized to the model size with
nearest neighbour (as `adtk eval`).

    nice -n 15 .venv/bin/python bench/feature_cache.py --out /tmp/adtk_mt_lite0_256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "magnetic-tile").resolve()


@torch.no_grad()
def extract(data: Path, out: Path, backbone_name: str, image_size_px: int, batch_size: int = 16) -> None:
    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.data import index_dataset, iter_images, read_mask
    from adtk.toolkit.evaluate import resize_mask
    from adtk.toolkit.preprocess import FramePreprocess

    out.mkdir(parents=True, exist_ok=True)
    index = index_dataset(data)
    backbone = create_backbone(backbone_name)
    preprocess = FramePreprocess(image_size_px, backbone.mean, backbone.std)
    meta = {"data": str(data), "backbone": backbone.name, "stages": list(backbone.stages),
            "channels": list(backbone.channels), "weights_source": backbone.weights_source,
            "image_size_px": image_size_px, "splits": {}}
    for split, samples in (("train", index.train), ("test", index.test)):
        tic = time.perf_counter()
        maps: list[list[np.ndarray]] = [[] for _ in backbone.channels]
        masks, pending = [], []

        def flush():
            if pending:
                for level, stage_map in enumerate(backbone(torch.cat(pending))):
                    maps[level].append(stage_map.numpy())
                pending.clear()

        for sample, image in iter_images(samples):
            pending.append(preprocess(torch.from_numpy(image)[None]))
            if split == "test":
                mask = (read_mask(sample.mask_path, image.shape[:2]) if sample.mask_path is not None
                        else np.zeros(image.shape[:2], dtype=bool))
                masks.append(resize_mask(mask, (image_size_px, image_size_px)))
            if len(pending) == batch_size:
                flush()
        flush()
        for level, chunks in enumerate(maps):
            np.save(out / f"{split}_stage{level}.npy", np.concatenate(chunks))
        if split == "test":
            np.save(out / "test_masks.npy", np.stack(masks))
        meta["splits"][split] = [{"path": str(s.path), "label": s.label, "defect_type": s.defect_type}
                                 for s in samples]
        print(f"{split}: {len(samples)} images in {time.perf_counter() - tic:.1f} s", flush=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def load(folder: Path) -> tuple[dict, dict[str, list[np.ndarray]], np.ndarray]:
    """-> (meta, {"train": [stage maps], "test": [...]}, test masks bool [N, S, S])."""
    meta = json.loads((folder / "meta.json").read_text())
    stages = {split: [np.load(folder / f"{split}_stage{i}.npy", mmap_mode="r") for i in range(len(meta["channels"]))]
              for split in ("train", "test")}
    return meta, stages, np.load(folder / "test_masks.npy")


def load_indexed(folder: Path):
    """load() plus the data set's index and path -> cache row maps:
    (meta, stages, masks, index, train_row, test_row)."""
    from adtk.toolkit.data import index_dataset

    meta, stages, masks = load(folder)
    index = index_dataset(meta["data"])
    train_row = {str(s.path): i for i, s in enumerate(index.train)}
    test_row = {str(s.path): i for i, s in enumerate(index.test)}
    return meta, stages, masks, index, train_row, test_row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    extract(args.data, args.out, args.backbone, args.size)
