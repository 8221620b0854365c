"""The anomalib side of bench/vs_anomalib.py: runs inside anomalib's own virtual environment.

Imports only anomalib, torch, torchvision and numpy (never adtk), so it measures anomalib as a user
installs it. One process per (method, training set): fit through anomalib's Engine on a Folder data
module, export to ONNX the way anomalib does, and write the torch model's raw test predictions (image
scores and anomaly maps before anomalib's post-processor, whose min-max normalisation clamps and would
tie scores) for the orchestrator to score with the same metric code as adtk's.

    python bench/anomalib_worker.py --data DIR --test-list LIST.json --weights SD.pt --out DIR \
        --method patchcore --coreset-ratio 0.01
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def load_backbone_weights(model, weights: Path, deepest_stage: str) -> dict:
    """Load the bench's tf_efficientnet_lite0 state dict into anomalib's timm feature extractor.

    anomalib cannot download (no internet); the orchestrator hands it the same tensors adtk uses. Keys it
    lacks may only be for modules deeper than the last tapped stage (unused by the features).
    """
    extractor = model.model.feature_extractor.feature_extractor
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    missing, unexpected = extractor.load_state_dict(state, strict=False)
    last_block = int(deepest_stage.split(".")[1])
    deeper = [k for k in missing if k.startswith("blocks.") and int(k.split(".")[1]) > last_block]
    used_missing = sorted(set(missing) - set(deeper))
    if used_missing or unexpected:
        raise SystemExit(f"weights do not fit anomalib's backbone: missing {used_missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")
    return {"loaded": len(state), "unused_deeper_modules_without_weights": len(deeper)}


def read_rgb(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/good (the training set)")
    parser.add_argument("--test-list", type=Path, required=True, help="JSON list of test image paths")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", choices=("patchcore", "padim"), required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--layers", default="blocks.2,blocks.4")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--num-neighbors", type=int, default=9)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import anomalib
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore
    from torchvision.transforms.v2 import Resize

    layers = tuple(args.layers.split(","))
    if args.method == "patchcore":
        model = Patchcore(backbone=args.backbone, layers=layers, pre_trained=False,
                          coreset_sampling_ratio=args.coreset_ratio, num_neighbors=args.num_neighbors)
    else:
        model = Padim(backbone=args.backbone, layers=layers, pre_trained=False, n_features=args.n_features)
    weights_note = load_backbone_weights(model, args.weights, layers[-1])

    # The training images differ in size: resized to the model size in the data module (anomalib's own
    # pre-processor then resizes 256 -> 256, a no-op). No worker processes: one process to measure.
    datamodule = Folder(name="bench", root=args.data, normal_dir="train/good", test_split_mode="none",
                        val_split_mode="none", train_batch_size=args.batch_size, eval_batch_size=args.batch_size,
                        num_workers=0, train_augmentations=Resize((args.size, args.size), antialias=True))
    engine = Engine(default_root_dir=str(args.out / "engine"), logger=False, enable_progress_bar=False)

    timings = {}
    subsample = getattr(model.model, "subsample_embedding", None)
    if subsample is not None:  # time the coreset step apart from the rest of the fit
        def timed_subsample(*a, **k):
            tic = time.perf_counter()
            result = subsample(*a, **k)
            timings["coreset_s"] = time.perf_counter() - tic
            return result
        model.model.subsample_embedding = timed_subsample

    tic = time.perf_counter()
    # Training data only: no validation split (this bench scores the test images itself, below).
    datamodule.setup("fit")
    engine.fit(model=model, train_dataloaders=datamodule.train_dataloader())
    timings["fit_s"] = time.perf_counter() - tic
    import resource
    peak_rss_after_fit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    bank_shape = None
    if args.method == "patchcore":
        bank_shape = list(model.model.memory_bank.shape)
    else:
        bank_shape = [int(model.model.gaussian.mean.numel()), 1]

    # Raw predictions of the torch model: anomalib's pre-processor, then its torch model in eval mode.
    model.eval()
    paths = json.loads(args.test_list.read_text())
    scores, maps = [], []
    tic = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(paths), args.batch_size):
            batch = torch.stack([Resize((args.size, args.size), antialias=True)(read_rgb(p))
                                 for p in paths[start:start + args.batch_size]])
            prediction = model.model(model.pre_processor(batch))
            scores.append(prediction.pred_score.reshape(-1).numpy())
            maps.append(prediction.anomaly_map.reshape(len(batch), args.size, args.size).numpy())
    timings["predict_s"] = time.perf_counter() - tic
    np.save(args.out / "scores.npy", np.concatenate(scores).astype(np.float64))
    np.save(args.out / "maps.npy", np.concatenate(maps).astype(np.float32))

    tic = time.perf_counter()
    # anomalib's own ONNX export. Engine.export(input_size=...) gives a model whose batch is fixed at 2 (its
    # example input for a dynamic batch, which dynamo then specialises); dynamic_axes={} asks for the static
    # batch-1 model that per-frame latency is measured on.
    exported = model.to_onnx(args.out / "export", input_size=(args.size, args.size), dynamic_axes={})
    timings["export_s"] = time.perf_counter() - tic
    onnx_files = sorted(p for p in Path(exported).parent.iterdir() if p.is_file())
    report = {
        "anomalib_version": anomalib.__version__, "torch_version": torch.__version__,
        "method": args.method, "weights": weights_note, "timings_s": timings,
        "peak_rss_mb_after_fit": peak_rss_after_fit_mb, "bank_shape": bank_shape,
        "onnx": str(exported), "onnx_files": {p.name: p.stat().st_size for p in onnx_files},
        "num_train": len(list((args.data / "train" / "good").iterdir())), "num_test": len(paths),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
