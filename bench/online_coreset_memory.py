"""Issue-4 bench: PatchCore on a training set 4x magnetic-tile's, offline greedy coreset against the online
coreset (`--param sampler=online`, seed 003), peak RSS and wall time of each `adtk build` process.

1. writes a 4x training set as an MVTec-style folder in a temp dir: every train/good image as decoded
   (PNG), flipped left-right, flipped top-bottom and rotated 180 degrees (761 -> 3,044 images); test/ and
   ground_truth/ are symlinks to the real ones, so both artefacts are scored on the real test split;
2. runs `adtk build` twice in its own process at the same coreset ratio, the default (offline) sampler and
   the online one, each measured with os.wait4 (peak RSS of that process, wall seconds);
3. scores both artefacts' image AUROC on the test split (adtk.toolkit.evaluate.evaluate_artefact);
4. writes bench/results/online_coreset_memory.md (images, bank rows, peak RSS, wall, AUROC, ratio
   online / offline).

    nice -n 15 .venv/bin/python bench/online_coreset_memory.py
    nice -n 15 .venv/bin/python bench/online_coreset_memory.py --max-source-images 20 --no-record   # smoke
    nice -n 15 .venv/bin/python bench/online_coreset_memory.py --work /tmp/adtk-online-coreset-work  # resumable

With --work the folder is kept: the 4x set is written once, and each build's measurement is saved as
NAME.measured.json beside its artefact as soon as the build ends, so a run cut off later (e.g. killed while
scoring) resumes without rebuilding.

Real tf_efficientnet_lite0 ImageNet weights (the default backbone), 256 px. Wall times depend on the load
on the machine; the peak RSS is the figure this bench is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "magnetic-tile"
RESULTS = REPO / "bench" / "results" / "online_coreset_memory.md"
# (name suffix, uint8 [H, W, 3] -> uint8 [H, W, 3]): the originals and three exact, lossless copies
VARIANTS = (("orig", lambda image: image), ("hflip", lambda image: image[:, ::-1]),
            ("vflip", lambda image: image[::-1]), ("rot180", lambda image: image[::-1, ::-1]))


def write_augmented_set(source: Path, root: Path, max_source_images: int | None, log) -> int:
    """root/train/good = the VARIANTS of source's train/good images as PNG; test/, ground_truth/ symlinked."""
    from PIL import Image

    from adtk.runtime.images import read_image
    from adtk.toolkit.data import index_dataset

    good = root / "train" / "good"
    originals = [sample.path for sample in index_dataset(source).train][:max_source_images]
    count = len(originals) * len(VARIANTS)
    if good.is_dir() and len(list(good.iterdir())) == count:
        log(f"reusing the {count} training images in {good}")
        return count
    good.mkdir(parents=True, exist_ok=True)
    for path in originals:
        image = read_image(path)
        for suffix, transform in VARIANTS:
            Image.fromarray(np.ascontiguousarray(transform(image))).save(good / f"{Path(path).stem}_{suffix}.png")
    for folder in ("test", "ground_truth"):
        if not (root / folder).is_symlink():
            (root / folder).symlink_to((source / folder).resolve(), target_is_directory=True)
    log(f"wrote {count} training images ({len(originals)} originals x {len(VARIANTS)}) to {good}")
    return count


def build_measured(data: Path, work: Path, name: str, extra: list[str], args, log) -> dict:
    """`adtk build` in its own process -> its measurement, artefact path and command."""
    out = work / f"{name}.onnx"
    cmd = [sys.executable, "-m", "adtk.toolkit.cli.main", "build", "--data", str(data), "-o", str(out),
           "--size", str(args.size), "--coreset-ratio", str(args.coreset_ratio), "--seed", str(args.seed), *extra]
    saved = work / f"{name}.measured.json"
    if saved.exists() and out.exists():
        measured = json.loads(saved.read_text())
        log(f"[{name}] reusing the build measured in {saved}")
    else:
        log(f"[{name}] {' '.join(cmd[3:])}")
        measured = run_measured(cmd, work / f"{name}.build.log")
        saved.write_text(json.dumps(measured))
    log(f"[{name}] built in {measured['wall_s']:.0f} s, peak RSS {measured['peak_rss_mb']:.0f} MB")
    return {**measured, "artefact": out, "command": "adtk " + " ".join(cmd[3:]).replace(str(work), "$WORK")}


def score(data: Path, build: dict, log) -> dict:
    """The build's facts from its manifest and its image AUROC on the test split (in this process, after all
    builds: see reset_own_peak_rss)."""
    from adtk.runtime.artefact import read_artefact
    from adtk.toolkit.evaluate import evaluate_artefact

    out = build.pop("artefact")
    manifest = read_artefact(out).manifest
    log(f"scoring {out.name} on the test split")
    tic = time.perf_counter()
    metrics = evaluate_artefact(out, data, backend="cpu")
    return {**build,
            "fit_images": manifest["training"]["num_fit_images"],
            "calibration_images": manifest["training"]["num_calibration_images"],
            "bank_rows": manifest["method"]["fit"]["memory_bank_rows"],
            "bank_dims": manifest["method"]["fit"]["memory_bank_dims"],
            "build_timings_s": manifest["build"]["timings_s"], "image_auroc": metrics["image_auroc"],
            "eval_s": time.perf_counter() - tic}


def write_results(runs: dict, settings: dict, path: Path) -> None:
    offline, online = runs["offline"], runs["online"]
    feature_gb = offline["fit_images"] * offline["bank_dims"] * settings["patches_per_image"] * 4 / 1e9
    lines = [
        "# Online coreset: bounded-memory PatchCore builds (bench/online_coreset_memory.py)", "",
        f"{settings['date']}; machine: {settings['machine']}; load average {settings['load_before']} at the start "
        f"and {settings['load_after']} at the end of this invocation. Other jobs shared the 2 cores during the "
        "builds (load averages per build below): wall times are inflated and compare only under equal load; "
        "peak RSS is not affected.",
        f"Training set: magnetic-tile train/good x4 ({settings['train_images']} images: originals, left-right "
        f"flips, top-bottom flips, 180-degree rotations, PNG); test split: the real one ({settings['test_images']} "
        f"images). tf_efficientnet_lite0 ImageNet weights, {settings['size']} px, coreset ratio "
        f"{settings['coreset_ratio']}, seed {settings['seed']}.", "",
        "| sampler | fit images | bank rows | peak RSS MB | wall s | image AUROC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("offline", "online"):
        run = runs[name]
        lines.append(f"| {name} | {run['fit_images']} | {run['bank_rows']} | {run['peak_rss_mb']:.0f} | "
                     f"{run['wall_s']:.0f} | {run['image_auroc']:.4f} |")
    lines.append(f"| online / offline | | {online['bank_rows'] / offline['bank_rows']:.3f} | "
                 f"{online['peak_rss_mb'] / offline['peak_rss_mb']:.3f} | {online['wall_s'] / offline['wall_s']:.3f} | "
                 f"{online['image_auroc'] - offline['image_auroc']:+.4f} (difference) |")
    lines += ["", f"The offline build holds all fit features at once ({offline['fit_images']} x "
                  f"{offline['bank_dims']} x {settings['patches_per_image']} float32 = {feature_gb:.2f} GB) and "
                  "projects every patch for the greedy coreset; the online build extracts 4 images at a time and "
                  "adds each 8-image group's share to the bank (toolkit/online_coreset.py), so it holds one group "
                  "and the bank.", "",
              "Commands ($WORK = the temp folder with the 4x set):", ""]
    lines += [f"- {name}: `{runs[name]['command']}`; build phases (s): {json.dumps(runs[name]['build_timings_s'])}; "
              f"load average at the build's end {runs[name].get('load_average_at_end', 'not recorded')}; "
              f"RSS floor inherited from the bench process {runs[name].get('inherited_floor_mb', 'not recorded')} MB; "
              f"eval {runs[name]['eval_s']:.0f} s" for name in ("offline", "online")]
    lines += [f"- note on {name}: {runs[name]['note']}" for name in ("offline", "online") if "note" in runs[name]]
    lines += ["", "```json", json.dumps({"settings": settings, "runs": runs}, indent=1), "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-source-images", type=int, default=None, help="use only the first N originals (smoke)")
    parser.add_argument("--no-record", action="store_true", help=f"do not write {RESULTS.relative_to(REPO)}")
    parser.add_argument("--work", type=Path, default=None, help="keep the 4x set and artefacts here (resumable)")
    args = parser.parse_args()

    def log(message):
        print(message, flush=True)

    settings = {"date": date.today().isoformat(), "size": args.size, "coreset_ratio": args.coreset_ratio,
                "seed": args.seed, "patches_per_image": (args.size // 8) ** 2,  # lite0 blocks.2: stride 8
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, {platform.platform()}",
                "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="adtk-online-coreset-") as tmp:
        work = Path(tmp) if args.work is None else args.work
        work.mkdir(parents=True, exist_ok=True)
        data = work / "magnetic-tile-x4"
        settings["train_images"] = write_augmented_set(args.data, data, args.max_source_images, log)
        from adtk.toolkit.data import index_dataset

        settings["test_images"] = len(index_dataset(data).test)
        # both builds before any scoring: a build inherits this process's RSS as its floor (bench/measure.py)
        builds = {"offline": build_measured(data, work, "offline", [], args, log),
                  "online": build_measured(data, work, "online", ["--param", "sampler=online"], args, log)}
        runs = {name: score(data, build, log) for name, build in builds.items()}
    settings["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    for name, run in runs.items():
        log(f"{name}: {run['fit_images']} fit images, bank {run['bank_rows']} rows, peak RSS "
            f"{run['peak_rss_mb']:.0f} MB, wall {run['wall_s']:.0f} s, image AUROC {run['image_auroc']:.4f}")
    log(f"online / offline peak RSS: {runs['online']['peak_rss_mb'] / runs['offline']['peak_rss_mb']:.3f}")
    if not args.no_record:
        write_results(runs, settings, RESULTS)
        log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
