"""Issue-8 bench: adtk and anomalib side by side, same images, backbone, weights, size and coreset ratio.

One command; it makes anomalib's own virtual environment on first use (PyPI anomalib 2.7.0 with the
torch/torchvision this machine's pip takes from local disk), then for each method pair and training set:

1. writes the training and test images as a symlinked MVTec-style folder (so both tools read the same
   files) and the real tf_efficientnet_lite0 ImageNet weights adtk uses as a plain state dict, which the
   anomalib worker loads into anomalib's timm backbone (it cannot download);
2. fits each tool in its own process (`adtk build` code path; bench/anomalib_worker.py in anomalib's
   venv), measuring wall time and peak RSS of the process with wait4;
3. scores the test set with the same metric code for both: adtk through its artefact (onnxruntime,
   raw scores), anomalib through its torch model's raw outputs (before its clamping min-max step);
4. times both exported ONNX models in onnxruntime on the CPU, batch 1, interleaved call by call
   (median and p99 of 50 after 10 warm-up), thread-pool spinning off in both sessions so one idle
   session's spinning threads do not steal the 2 cores from the other;
5. times the kNN head on adtk's bank against faiss IndexFlatL2 and a numpy GEMM (same bank, same queries);
6. writes bench/results/vs_anomalib.md (ratios adtk / anomalib, settings, date, machine).

    .venv/bin/python bench/vs_anomalib.py                 # patchcore (1%, 200 images) and padim, clean + 10%
    .venv/bin/python bench/vs_anomalib.py --pairs patchcore --pollution 0

Takes ~15-20 minutes on 2 cores (anomalib's coreset dominates). The venv goes to ~/.cache/adtk-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import venv
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "magnetic-tile"
ANOMALIB_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "anomalib==2.7.0", "onnx", "onnxscript",
                         "onnxruntime")
BACKBONE, STAGES, SIZE = "tf_efficientnet_lite0", ("blocks.2", "blocks.4"), 256

# Per method pair: adtk method params, anomalib worker flags, the training-set size (None = all images).
PAIRS = {
    "patchcore": dict(adtk={"coreset_ratio": 0.01, "num_neighbors": 9},
                      anomalib=["--method", "patchcore", "--coreset-ratio", "0.01", "--num-neighbors", "9"],
                      train_images=200, extra_precisions=("int8",)),
    "padim": dict(adtk={"num_channels": 100}, anomalib=["--method", "padim", "--n-features", "100"],
                  train_images=None),
}


# ------------------------------------------------------------------------------------------- processes

def ensure_anomalib_venv(path: Path, log) -> Path:
    python = path / "bin" / "python"
    marker = path / "adtk-bench-requirements.txt"
    wanted = "\n".join(ANOMALIB_REQUIREMENTS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log(f"creating anomalib's venv at {path} ({', '.join(ANOMALIB_REQUIREMENTS)}); a few minutes")
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *ANOMALIB_REQUIREMENTS], check=True)
    marker.write_text(wanted)
    return python


# ------------------------------------------------------------------------------------------------ data

def link_dataset(root: Path, train, test) -> Path:
    """MVTec-style folder of symlinks: train/good/*, test/<type>/*, ground_truth/<type>/* (masks)."""
    for sample in train:
        target = root / "train" / "good" / f"{sample.defect_type}__{sample.path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(sample.path.resolve())
    for sample in test:
        folder = root / "test" / sample.defect_type
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sample.path.name).symlink_to(sample.path.resolve())
        if sample.mask_path is not None:
            mask = root / "ground_truth" / sample.defect_type / sample.mask_path.name
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.symlink_to(sample.mask_path.resolve())
    return root


def training_sets(data: Path, size: int | None, pollution: list[float], seed: int):
    """-> {rate: (train samples, test samples)}; the seed-000 protocol (defects move from test to train)."""
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.research.pollution import pollute

    index = index_dataset(data)
    train = list(index.train)
    if size is not None and size < len(train):
        keep = np.sort(np.random.default_rng(seed).choice(len(train), size, replace=False))
        train = [train[i] for i in keep]
    sets = {}
    for rate in pollution:
        split = pollute(train, index.test, rate, "sroc", seed)
        sets[rate] = (list(split.train), list(split.test))
    return sets


def export_weights(path: Path) -> str:
    """adtk's resolved tf_efficientnet_lite0 weights as a tensor-only state dict; -> their sha256."""
    import torch

    from adtk.toolkit.backbones import create_backbone

    extractor = create_backbone(BACKBONE, stages=STAGES)
    torch.save({k: v.contiguous() for k, v in extractor.model.state_dict().items()}, path)
    return extractor.weights_sha256


# ----------------------------------------------------------------------------------------- adtk worker

def adtk_worker(args) -> None:
    """`--adtk-worker`: one adtk build in this process (the `adtk build` code path), JSON report on stdout."""
    import resource

    from adtk.toolkit.build import BuildConfig, build

    params = json.loads(args.params)
    config = BuildConfig(data=args.data, out=args.out, method=args.method, method_params=params,
                         backbone=BACKBONE, stages=STAGES, image_size_px=SIZE, seed=args.seed,
                         precision=args.precision)
    result = build(config, log=lambda message: print(message, flush=True))
    report = {"timings_s": result.timings_s, "fit_report": result.manifest["method"].get("fit", {}),
              "num_fit": len(result.fit_samples), "num_calibration": len(result.calibration_samples),
              "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    args.report.write_text(json.dumps(report, indent=2))
    from adtk.toolkit.cli.main import FAST_EXIT_COMMANDS  # leave as `adtk build` does (toolkit/cli/main.py)

    assert "build" in FAST_EXIT_COMMANDS
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------------ measuring

def interleaved_latency(sessions: dict, feeds: dict, runs: int = 50, warmup: int = 10) -> dict:
    """Median and p99 ms per call for each session, calls interleaved so machine noise hits all alike."""
    times = {name: [] for name in sessions}
    for i in range(warmup + runs):
        for name, session in sessions.items():
            tic = time.perf_counter()
            session.run(None, feeds[name])
            if i >= warmup:
                times[name].append((time.perf_counter() - tic) * 1000.0)
    return {name: {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99))}
            for name, t in times.items()}


def ort_session(source):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def latency_side_by_side(adtk_artefacts: dict[str, Path], anomalib_onnx: Path, frame: np.ndarray) -> dict:
    """adtk gets the camera frame as decoded (uint8, native size: its graph resizes); anomalib's fixed
    256 x 256 float input gets the frame already resized and scaled outside its graph (not timed)."""
    import torch
    import torch.nn.functional as F

    from adtk.runtime.artefact import read_artefact

    sessions = {name: ort_session(read_artefact(path).model_bytes) for name, path in adtk_artefacts.items()}
    feeds = {name: {session.get_inputs()[0].name: frame[None]} for name, session in sessions.items()}
    sessions["anomalib"] = ort_session(str(anomalib_onnx))
    resized = F.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0, size=(SIZE, SIZE),
                            mode="bilinear", antialias=True).numpy()
    feeds["anomalib"] = {sessions["anomalib"].get_inputs()[0].name: resized.astype(np.float32)}
    return interleaved_latency(sessions, feeds)


def stored_search_bank(model, dims: int, rows: int) -> np.ndarray:
    """The [dims, rows] matrix the artefact's bank search multiplies by: one initializer, or the chunks the compiler
    stores it in for onnxruntime's CPU kernels (export/passes/chunk_bank.py names them <name>__rows<c>)."""
    import re

    from onnx import numpy_helper

    pieces: dict[str, list] = {}
    for init in model.graph.initializer:
        if len(init.dims) != 2 or init.dims[0] != dims:
            continue
        if init.dims[1] == rows:
            return numpy_helper.to_array(init)
        chunk = re.fullmatch(r"(.+)__rows(\d+)", init.name)
        if chunk:
            pieces.setdefault(chunk.group(1), []).append((int(chunk.group(2)), init))
    for chunks in pieces.values():
        if sum(init.dims[1] for _, init in chunks) == rows:
            return np.concatenate([numpy_helper.to_array(init) for _, init in sorted(chunks, key=lambda c: c[0])], 1)
    raise SystemExit(f"no [{dims} x {rows}] bank (whole or in chunks) in the artefact")


def knn_head_timing(adtk_artefact: Path, runs: int = 50) -> dict:
    """The PatchCore head (exported alone) vs faiss IndexFlatL2 vs numpy GEMM, on adtk's bank, one frame's
    patches (the bank rows jittered), each returning every patch's nearest squared distance."""
    import faiss
    import onnx
    import torch
    from onnx import numpy_helper

    from adtk.export.formats import DEFAULT_OPSET
    from adtk.runtime.artefact import read_artefact
    from adtk.toolkit.methods.patchcore import PatchCoreHead, PatchCoreState

    record = read_artefact(adtk_artefact)
    fit = record.manifest["method"]["fit"]
    rows, dims = int(fit["memory_bank_rows"]), int(fit["memory_bank_dims"])
    model = onnx.load_from_string(record.model_bytes)
    stored = stored_search_bank(model, dims, rows)
    bank = np.ascontiguousarray(-0.5 * stored.T, dtype=np.float32)
    rng = np.random.default_rng(0)
    patches = 32 * 32
    queries = bank[rng.integers(0, rows, patches)] + rng.normal(0, 0.1, (patches, dims)).astype(np.float32)

    head = PatchCoreHead(PatchCoreState(bank, np.zeros((rows, 0), dtype=np.int64))).eval()
    with tempfile.TemporaryDirectory() as tmp:
        head_path = Path(tmp) / "head.onnx"

        class PatchScores(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.head = head

            def forward(self, features):
                return self.head(features).patch_scores

        # exported as the compiler exports the whole graph (dynamo, opset 18), at a fixed shape
        torch.onnx.export(PatchScores().eval(), (torch.from_numpy(queries.T.reshape(1, dims, 32, 32).copy()),),
                          str(head_path), input_names=["features"], output_names=["patch_scores"],
                          opset_version=DEFAULT_OPSET, dynamo=True, external_data=False, optimize=True, verbose=False)
        session = ort_session(str(head_path))
    feature_map = np.ascontiguousarray(queries.T.reshape(1, dims, 32, 32))
    index = faiss.IndexFlatL2(dims)
    index.add(bank)
    bank_t_neg2, bank_sq = np.ascontiguousarray(-2.0 * bank.T), (bank * bank).sum(1)

    def numpy_gemm():
        return ((queries @ bank_t_neg2 + bank_sq).min(axis=1) + (queries * queries).sum(1)).clip(min=0)

    calls = {"adtk head (onnxruntime)": lambda: session.run(None, {"features": feature_map}),
             "faiss IndexFlatL2": lambda: index.search(queries, 1),
             "numpy GEMM": numpy_gemm}
    reference = index.search(queries, 1)[0][:, 0]
    ours = session.run(None, {"features": feature_map})[0].reshape(-1) ** 2
    agreement = float(np.abs(ours - reference).max())
    times = {name: [] for name in calls}
    for i in range(10 + runs):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            if i >= 10:
                times[name].append((time.perf_counter() - tic) * 1000.0)
    result = {name: float(np.median(t)) for name, t in times.items()}
    return {"bank": f"{rows} x {dims}", "queries": patches, "median_ms": result,
            "max_abs_sq_distance_diff_vs_faiss": agreement}


# -------------------------------------------------------------------------------------------------- run

def run_pair(name: str, rate: float, train, test, workdir: Path, anomalib_python: Path, weights: Path,
             seed: int, log) -> dict:
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluate import evaluate_artefact
    from adtk.toolkit.evaluation.metrics import evaluate_predictions

    pair = PAIRS[name]
    tag = f"{name}_p{int(rate * 100)}"
    data_dir = link_dataset(workdir / f"data_{tag}", train, test)
    test_paths = [str(s.path) for s in index_dataset(data_dir).test]
    (workdir / f"test_{tag}.json").write_text(json.dumps(test_paths))

    log(f"[{tag}] adtk build ({len(train)} training images)")
    artefact = workdir / f"adtk_{tag}.onnx"
    adtk_report = workdir / f"adtk_{tag}.json"
    adtk_proc = run_measured([sys.executable, str(Path(__file__).resolve()), "--adtk-worker", "--data", str(data_dir),
                              "--out", str(artefact), "--method", name, "--params", json.dumps(pair["adtk"]),
                              "--report", str(adtk_report), "--seed", str(seed)], workdir / f"adtk_{tag}.log")
    adtk = json.loads(adtk_report.read_text())
    variants, refusals = {"adtk": artefact}, {}
    for precision in pair.get("extra_precisions", ()):  # same fit, compiled at another precision (issue 7)
        log(f"[{tag}] adtk build --precision {precision}")
        path = workdir / f"adtk_{tag}_{precision}.onnx"
        try:
            run_measured([sys.executable, str(Path(__file__).resolve()), "--adtk-worker", "--data", str(data_dir),
                          "--out", str(path), "--method", name, "--params", json.dumps(pair["adtk"]),
                          "--report", str(workdir / f"adtk_{tag}_{precision}.json"), "--seed", str(seed),
                          "--precision", precision], workdir / f"adtk_{tag}_{precision}.log")
            variants[f"adtk {precision}"] = path
        except SystemExit:  # the compiler's AUROC gate may refuse a precision: that is a result, record it
            refusal = [line for line in (workdir / f"adtk_{tag}_{precision}.log").read_text().splitlines()
                       if "Error:" in line]
            refusals[f"adtk {precision}"] = refusal[-1] if refusal else "failed (see its log)"
            log(f"[{tag}] {precision}: {refusals[f'adtk {precision}']}")

    log(f"[{tag}] anomalib fit")
    anomalib_out = workdir / f"anomalib_{tag}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    theirs_proc = run_measured([str(anomalib_python), str(REPO / "bench" / "anomalib_worker.py"), "--data", str(data_dir),
                                "--test-list", str(workdir / f"test_{tag}.json"), "--weights", str(weights),
                                "--out", str(anomalib_out), "--layers", ",".join(STAGES), "--size", str(SIZE),
                                *pair["anomalib"]], workdir / f"anomalib_{tag}.log", env=env)
    theirs = json.loads((anomalib_out / "report.json").read_text())

    log(f"[{tag}] scoring both on {len(test_paths)} test images")
    details: dict = {}
    ours_metrics = evaluate_artefact(artefact, data_dir, details=details)
    if [str(s.path) for s in details["samples"]] != test_paths:
        raise SystemExit("test order differs between the two tools")
    theirs_metrics = evaluate_predictions(np.load(anomalib_out / "scores.npy"), details["labels"],
                                          maps=np.load(anomalib_out / "maps.npy"), masks=details["masks"])

    from adtk.runtime.images import read_image
    frame = read_image(test_paths[0])
    latency = latency_side_by_side(variants, Path(theirs["onnx"]), frame)
    keys = ("image_auroc", "pixel_auroc", "au_pro")
    row = {
        "pair": name, "pollution": rate, "train_images": len(train), "test_images": len(test_paths),
        # fit = everything before the export: reading images, features, the method's fit, calibration
        # (anomalib: Engine.fit, which reads the images, extracts features and fits; it does not calibrate)
        "adtk": {"fit_s": adtk["timings_s"]["total_before_export"],
                 "timings_s": adtk["timings_s"], "process_wall_s": adtk_proc["wall_s"],
                 "peak_rss_mb": adtk_proc["peak_rss_mb"], "inherited_floor_mb": adtk_proc["inherited_floor_mb"],
                 "fit_report": adtk["fit_report"],
                 "num_fit": adtk["num_fit"], "num_calibration": adtk["num_calibration"],
                 "artefact_bytes": artefact.stat().st_size, "files": 1,
                 **{k: ours_metrics[k] for k in keys}, **latency["adtk"]},
        "anomalib": {"fit_s": theirs["timings_s"]["fit_s"], "timings_s": theirs["timings_s"],
                     "process_wall_s": theirs_proc["wall_s"], "peak_rss_mb": theirs_proc["peak_rss_mb"],
                     "inherited_floor_mb": theirs_proc["inherited_floor_mb"],
                     "peak_rss_mb_after_fit": theirs["peak_rss_mb_after_fit"], "bank_shape": theirs["bank_shape"],
                     "artefact_bytes": sum(theirs["onnx_files"].values()), "files": len(theirs["onnx_files"]),
                     **{k: theirs_metrics[k] for k in keys}, **latency["anomalib"]},
    }
    for variant, path in variants.items():
        if variant != "adtk":
            metrics = evaluate_artefact(path, data_dir)
            row[variant] = {"artefact_bytes": path.stat().st_size, "files": 1,
                            **{k: metrics[k] for k in keys}, **latency[variant]}
    for variant, why in refusals.items():
        row[variant] = {"refused": why}
    if name == "patchcore" and rate == 0:
        row["knn_head"] = knn_head_timing(artefact)
    log(json.dumps(row, indent=2))
    return row


def retime(workdir: Path, record: Path) -> None:
    """Latency (interleaved) and the kNN head again on a finished run's artefacts; rewrites the table."""
    from adtk.runtime.images import read_image

    saved = json.loads((workdir / "rows.json").read_text())
    for row in saved["rows"]:
        tag = f"{row['pair']}_p{int(row['pollution'] * 100)}"
        variants = {"adtk": workdir / f"adtk_{tag}.onnx"}
        variants.update({name: workdir / f"adtk_{tag}_{name.split()[1]}.onnx" for name in row
                         if name.startswith("adtk ") and "refused" not in row[name]})
        theirs = json.loads((workdir / f"anomalib_{tag}" / "report.json").read_text())
        frame = read_image(json.loads((workdir / f"test_{tag}.json").read_text())[0])
        latency = latency_side_by_side(variants, Path(theirs["onnx"]), frame)
        for name, timing in latency.items():
            row[name].update(timing)
        if "knn_head" in row:
            row["knn_head"] = knn_head_timing(variants["adtk"])
        print(tag, json.dumps(latency), flush=True)
    saved["settings"]["retimed"] = f"latency and kNN head re-timed on {date.today().isoformat()} (--retime)"
    (workdir / "rows.json").write_text(json.dumps(saved, indent=1))
    text = render(saved["rows"], saved["settings"])
    record.write_text(text)
    print(text)


def measured(side: dict) -> bool:
    """False where the peak RSS is only the floor inherited from the bench process (bench/measure.py), or where
    that floor was not recorded (runs before the reset existed)."""
    floor = side.get("inherited_floor_mb")
    return floor is not None and side["peak_rss_mb"] > floor + 1.0


def rss(side: dict) -> str:
    if measured(side):
        return f"{side['peak_rss_mb']:.0f}"
    floor = side.get("inherited_floor_mb")
    return f"<= {side['peak_rss_mb']:.0f} (floor)" if floor is not None else f"{side['peak_rss_mb']:.0f} (floor?)"


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(rows: list[dict], settings: dict) -> str:
    lines = [f"# adtk vs anomalib, side by side (bench/vs_anomalib.py), {settings['date']}", "",
             f"Machine: {settings['machine']}. Settings: {json.dumps(settings['settings'])}."
             + (f" {settings['retimed']}." if "retimed" in settings else ""), "",
             "| pair | pollution | train imgs | fit s (adtk / anomalib) | ratio | peak RSS MB | ratio | bank rows x dims "
             "| artefact MB (files) | ratio | latency ms median (p99) | ratio | image AUROC | pixel AUROC | AU-PRO |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["adtk"], r["anomalib"]
        bank_a = a["fit_report"]
        bank_a = (f"{bank_a.get('memory_bank_rows', '-')} x {bank_a.get('memory_bank_dims', '-')}"
                  if "memory_bank_rows" in bank_a else "-")
        bank_b = " x ".join(str(v) for v in b["bank_shape"]) if r["pair"] == "patchcore" else "-"
        lines.append(
            f"| {r['pair']} | {r['pollution']:.0%} | {r['train_images']} (adtk fits {a['num_fit']}, holds out "
            f"{a['num_calibration']}) | {a['fit_s']:.1f} / {b['fit_s']:.1f} | {ratio(b['fit_s'], a['fit_s'])} faster "
            f"| {rss(a)} / {rss(b)} | {ratio(a['peak_rss_mb'], b['peak_rss_mb']) if measured(a) and measured(b) else '-'} "
            f"| {bank_a} / {bank_b} | {a['artefact_bytes'] / 1e6:.2f} ({a['files']}) / {b['artefact_bytes'] / 1e6:.2f} "
            f"({b['files']}) | {ratio(a['artefact_bytes'], b['artefact_bytes'])} "
            f"| {a['median_ms']:.2f} ({a['p99_ms']:.2f}) / {b['median_ms']:.2f} ({b['p99_ms']:.2f}) "
            f"| {ratio(a['median_ms'], b['median_ms'])} "
            f"| {a['image_auroc']:.4f} / {b['image_auroc']:.4f} | {a['pixel_auroc']:.4f} / {b['pixel_auroc']:.4f} "
            f"| {a['au_pro']:.4f} / {b['au_pro']:.4f} |")
    variant_rows = [(r, name) for r in rows for name in r if name.startswith("adtk ")]
    if variant_rows:
        lines += ["", "The same fit compiled at another precision (compiler pass, AUROC checked at build time), against "
                  "the same anomalib model:", "",
                  "| pair | pollution | adtk variant | artefact MB | ratio | latency ms median (p99) | ratio "
                  "| image AUROC | pixel AUROC | AU-PRO |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r, name in variant_rows:
            a, b = r[name], r["anomalib"]
            if "refused" in a:
                lines.append(f"| {r['pair']} | {r['pollution']:.0%} | {name} | refused by the compiler's AUROC gate: "
                             f"{a['refused'].split('Error: ')[-1]} | | | | | | |")
                continue
            lines.append(
                f"| {r['pair']} | {r['pollution']:.0%} | {name} | {a['artefact_bytes'] / 1e6:.2f} "
                f"| {ratio(a['artefact_bytes'], b['artefact_bytes'])} | {a['median_ms']:.2f} ({a['p99_ms']:.2f}) "
                f"| {ratio(a['median_ms'], b['median_ms'])} | {a['image_auroc']:.4f} / {b['image_auroc']:.4f} "
                f"| {a['pixel_auroc']:.4f} / {b['pixel_auroc']:.4f} | {a['au_pro']:.4f} / {b['au_pro']:.4f} |")
    for r in rows:
        if "knn_head" in r:
            k = r["knn_head"]
            ms = k["median_ms"]
            lines += ["", f"kNN head, bank {k['bank']}, {k['queries']} queries (one frame), median of 50 ms: "
                      + ", ".join(f"{n} {v:.2f}" for n, v in ms.items())
                      + f"; adtk head / faiss = {ms['adtk head (onnxruntime)'] / ms['faiss IndexFlatL2']:.2f}x; "
                      f"max |squared distance - faiss| = {k['max_abs_sq_distance_diff_vs_faiss']:.2e}."]
    lines += ["", "<details><summary>rows</summary>", "", "```json", json.dumps(rows, indent=1), "```", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", default="patchcore,padim")
    parser.add_argument("--pollution", default="0,0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anomalib-venv", type=Path, default=Path.home() / ".cache" / "adtk-bench" / "anomalib-2.7.0")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "vs_anomalib.md")
    # internal: the adtk side, run in its own process
    parser.add_argument("--adtk-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--retime", action="store_true",
                        help="re-time the artefacts of an earlier run in --workdir (latency and kNN head only), "
                             "e.g. once the machine is quiet; fits and metrics are kept")
    args = parser.parse_args()
    if args.adtk_worker:
        adtk_worker(args)
        return
    if args.retime:
        retime(args.workdir, args.record)
        return

    def log(message):
        print(message, flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adtk-vs-anomalib-"))
    workdir.mkdir(parents=True, exist_ok=True)
    anomalib_python = ensure_anomalib_venv(args.anomalib_venv, log)
    weights = workdir / "tf_efficientnet_lite0.pt"
    weights_sha = export_weights(weights)
    rates = [float(r) for r in args.pollution.split(",")]
    # resuming: rows already in the work folder's rows.json are kept, not recomputed
    saved = workdir / "rows.json"
    rows = json.loads(saved.read_text())["rows"] if saved.exists() else []
    for name in args.pairs.split(","):
        for rate, (train, test) in training_sets(args.data, PAIRS[name]["train_images"], rates, args.seed).items():
            if any(r["pair"] == name and r["pollution"] == rate for r in rows):
                continue
            rows.append(run_pair(name, rate, train, test, workdir, anomalib_python, weights, args.seed, log))
            saved.write_text(json.dumps({"rows": rows}, indent=1))
    settings = {"date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU used, {platform.platform()}",
                "settings": {"data": args.data.name, "backbone": BACKBONE, "stages": STAGES, "size": SIZE,
                             "weights_sha256": weights_sha, "seed": args.seed,
                             "pairs": {n: {k: v for k, v in PAIRS[n].items()} for n in args.pairs.split(",")},
                             "pollution_protocol": "sroc (defects move from test to train, size fixed)"}}
    (workdir / "rows.json").write_text(json.dumps({"rows": rows, "settings": settings}, indent=1))
    text = render(rows, settings)
    args.record.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
