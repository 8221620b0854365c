"""Which DefectMaker fine-tune settings help LDKNN? One fine-tune per (variant, seed), scored on a data set's test
split with LDKNN, next to LDKNN on the starting (ImageNet) weights, plus what the keep-or-revert check says.

Variants override fields of the default ("fast") preset (training/finetune.py FinetunePreset), e.g.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/reb_finetune_sweep.py --seed 0 \
        --variant fast '{}' --variant last_stages '{"freeze_through_first_tap": true}'

A variant '{"batchnorm_only": true}' trains nothing: it re-estimates every BatchNorm's running statistics on the
fine-tune's frames (good images, train-mode forward, no gradients, cumulative average; AdaBN-style domain
adaptation) and keeps the ImageNet weights otherwise.

Rows go to --rows (jsonl, appended); each prints image / pixel AUROC and the check's verdict. Same protocol as
bench/reb_ablation.py (fit images as build(seed=0), 10% coreset with the row's seed, LDKNN K=5 alpha=1).
--validation-only skips the test split (the check's verdict alone: a choice that never reads the test split).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from reb_ablation import DEFAULT_DATA, cached_maps, embed, stage_maps


def ldknn_scores(maps: dict, channels, seed: int, coreset_ratio: float, test_labels, masks, smoother) -> dict:
    from adtk.toolkit.evaluation.metrics import image_auroc, pixel_auroc
    from adtk.toolkit.features import PatchEmbedding
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.methods.registry import create_method

    embedding = PatchEmbedding(channels).eval()
    method = create_method("ldknn", coreset_ratio=coreset_ratio, seed=seed)
    head = method.head(method.fit(FitInputs(embed(embedding, maps["fit"])))).eval()
    images, pixel_maps = [], []
    with torch.no_grad():
        for i in range(0, len(maps["test"][0]), 16):
            out = head(embedding([torch.from_numpy(m[i: i + 16]) for m in maps["test"]]))
            images.append(out.image_score.numpy())
            pixel_maps.append(smoother(out.patch_scores).numpy().astype(np.float32))
    return {"image_auroc": round(image_auroc(np.concatenate(images), test_labels), 4),
            "pixel_auroc": round(pixel_auroc(np.concatenate(pixel_maps), masks), 4)}


@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, frames: np.ndarray, normalise, batch: int = 16) -> None:
    """Replace every BatchNorm's running statistics by their cumulative average over `frames` (uint8 NHWC)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    model.train()
    for i in range(0, len(frames), batch):
        model(normalise(torch.from_numpy(frames[i: i + batch])))
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--max-train-images", type=int, default=250)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/reb_ablation_cache"))
    parser.add_argument("--rows", type=Path, default=Path("/tmp/reb_finetune_sweep.jsonl"))
    parser.add_argument("--no-imagenet", action="store_true", help="skip the ImageNet LDKNN row")
    parser.add_argument("--validation-only", action="store_true",
                        help="only the keep-or-revert check on held-out synthetic defects; no test-split scores")
    args = parser.parse_args()

    from adtk.toolkit.backbones import create_backbone, deepest_stage
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset, read_image, read_mask
    from adtk.toolkit.evaluate import resize_mask
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.methods.reb import copy_shared_weights, frames_at_model_size
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.postprocess import AnomalyMapSmoother
    from adtk.toolkit.preprocess import FramePreprocess
    from adtk.toolkit.training.finetune import PRESETS, finetune_backbone
    from adtk.toolkit.training.proxy_validation import split_heldout, validate_finetune

    index = index_dataset(args.data)
    fit_samples, _ = split_training_set(index.train, 0.1, args.max_train_images, 0)
    test_samples = list(index.test)
    labels = np.array([s.label for s in test_samples])
    imagenet = create_backbone("tf_efficientnet_lite0")
    size = 256
    preprocess = FramePreprocess(size, imagenet.mean, imagenet.std)
    masks = np.stack([resize_mask(read_mask(s.mask_path, read_image(s.path).shape[:2]), (size, size))
                      if s.mask_path else np.zeros((size, size), bool) for s in test_samples])
    smoother = AnomalyMapSmoother(preprocess.image_size_px, sigma=4.0)
    tag = f"{args.data.name}_n{len(fit_samples)}"

    def record(row):
        row = {"data": args.data.name, "seed": args.seed, **row}
        print(json.dumps(row), flush=True)
        with args.rows.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if not args.no_imagenet and not args.validation_only:
        imagenet_maps = {split: cached_maps(args.cache / f"imagenet_{tag}_{split}.npz",
                                            lambda s=samples: stage_maps(imagenet, preprocess, s))
                         for split, samples in (("fit", fit_samples), ("test", test_samples))}
        record({"variant": "imagenet", **ldknn_scores(imagenet_maps, imagenet.channels, args.seed,
                                                       args.coreset_ratio, labels, masks, smoother)})
    frames = frames_at_model_size([read_image(s.path) for s in fit_samples], (size, size))
    tuned, heldout = split_heldout(len(frames), args.seed)
    for name, overrides in args.variant:
        overrides = json.loads(overrides)
        batchnorm_only = overrides.pop("batchnorm_only", False)
        deep = create_backbone("tf_efficientnet_lite0", stages=(deepest_stage("tf_efficientnet_lite0"),),
                               trainable=True)
        tic = time.perf_counter()
        if batchnorm_only:
            reestimate_batchnorm(deep, frames[tuned], preprocess)
            report_dict = {"batchnorm_only": True}
        else:
            preset = dataclasses.replace(PRESETS["fast"], name=name, **overrides)
            report_dict = finetune_backbone(deep, deep.channels[-1], frames[tuned], preprocess, preset,
                                            seed=args.seed, first_tap=imagenet.stages[0]).as_dict()
        finetuned = copy.deepcopy(imagenet)
        copy_shared_weights(deep.model, finetuned.model)
        finetuned.eval()
        method = create_method("ldknn", coreset_ratio=args.coreset_ratio, seed=args.seed)
        embedding = method.embedding(tuple(imagenet.channels)).eval()
        validation = validate_finetune(imagenet, finetuned, embedding, preprocess,
                                       lambda f: method.head(method.fit(FitInputs(f))), frames[tuned],
                                       frames[heldout], args.seed)
        scores = {}
        if not args.validation_only:
            ft_maps = {split: stage_maps(finetuned, preprocess, samples)
                       for split, samples in (("fit", fit_samples), ("test", test_samples))}
            scores = ldknn_scores(ft_maps, imagenet.channels, args.seed, args.coreset_ratio, labels, masks,
                                  smoother)
        record({"variant": name, "overrides": overrides, "batchnorm_only": batchnorm_only, **scores,
                "finetune": report_dict, "validation": validation.as_dict(),
                "seconds": round(time.perf_counter() - tic, 1)})


if __name__ == "__main__":
    main()
