"""Issue-17 bench: default builds side by side -- PatchCore default (grouped coreset) vs `sampler=exact` vs the
online coreset at the same bank size, and REB's default build -- wall time, ratio, phases, peak RSS, bank rows,
and image / pixel AUROC of each artefact on the data set's test images (`adtk eval`'s code, onnxruntime).

Phases are the CLI's own timings: since ffb003a the build exports before it calibrates ("export" = the
torch.onnx export, "calibrate" = the held-out images scored by the exported model in onnxruntime; "export_again"
appears only if the calibrated constants could not be written into the exported model).
bench/calibrate_export_speed.py splits the export into its stages and times the two calibration paths.

Each build is its own `adtk build` process, one after another in this run (wait4 peak RSS, bench/measure.py);
the artefacts are evaluated after all builds (not timed). Targets (issue 17, on the 2-core x86 machine, quiet):
default PatchCore <= 30 s, REB <= 120 s, AUROC within 0.3 points of `sampler=exact`, online no slower than
offline at the same bank size.

    .venv/bin/python bench/build_speed.py                       # all 761 magnetic-tile training images
    .venv/bin/python bench/build_speed.py --max-train-images 40 --rows default,exact --no-record  # a quick check
    .venv/bin/python bench/build_speed.py --rows reb,reb_exact   # REB's fit: fast vs exact LDKNN (issue 17)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import append_record, run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "magnetic-tile").resolve()

# row name -> `adtk build` arguments besides --data / -o (and --max-train-images when given)
ROWS = {
    "default": ["--method", "patchcore"],
    # the default before the input size became `auto` (which keeps elongated frames' aspect ratio): the 256 x 256
    # square; the same build as `default` on near-square images such as magnetic-tile's
    "square": ["--method", "patchcore", "--size", "256"],
    "exact": ["--method", "patchcore", "--param", "sampler=exact"],
    "online": ["--method", "patchcore", "--param", "sampler=online"],  # windows of 32,768 patches (its default)
    # the paper's online coreset: every batch against every stored row (the online default before windows)
    "online_paper": ["--method", "patchcore", "--param", "sampler=online", "--param", "online_window_rows=0"],
    "reb": ["--method", "reb"],  # LDKNN's grouped coreset and IVF densities (its defaults), the threaded fine-tune
    # REB before issue 17's LDKNN changes: the global greedy coreset and exact densities (the fit ~5x slower)
    "reb_exact": ["--method", "reb", "--param", "sampler=exact", "--param", "density_search=exact"],
}


def adtk_command() -> list[str]:
    script = Path(sys.executable).with_name("adtk")
    return [str(script)] if script.exists() else [sys.executable, "-m", "adtk.toolkit.cli.main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", default="default,exact,online,reb", help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--max-train-images", type=int, default=None, help="a seeded subset (a quick check)")
    parser.add_argument("--eval", default="default,exact,online,reb,reb_exact", help="rows whose artefact is evaluated")
    parser.add_argument("--workdir", type=Path, default=None, help="artefacts and logs (default: a temporary folder)")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "build_speed.md")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    names = [name for name in args.rows.split(",") if name]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adtk_build_speed_"))
    workdir.mkdir(parents=True, exist_ok=True)

    from adtk.runtime.artefact import read_artefact
    from adtk.toolkit.evaluate import evaluate_artefact

    rows = []
    for name in names:
        out = workdir / f"{name}.onnx"
        cmd = adtk_command() + ["build", "--data", str(args.data), "-o", str(out), *ROWS[name]]
        if args.max_train_images:
            cmd += ["--max-train-images", str(args.max_train_images)]
        measured = run_measured(cmd, workdir / f"{name}.log")
        manifest = read_artefact(out).manifest
        fit = manifest["method"]["fit"]
        # the CLI's last report has every phase, export and compile included (the manifest is written before those)
        line = next(x for x in reversed((workdir / f"{name}.log").read_text().splitlines()) if "timings " in x)
        phases = {key: float(value) for key, value in re.findall(r"(\w+) ([\d.]+)s", line.split("timings ", 1)[1])}
        row = {"row": name, "wall_s": round(measured["wall_s"], 1), "peak_rss_mb": round(measured["peak_rss_mb"]),
               "bank_rows": fit.get("memory_bank_rows"), "load_average_at_end": measured["load_average_at_end"],
               "timings_s": phases,
               "num_fit_images": manifest["training"]["num_fit_images"], "artefact": str(out)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    for row in rows:
        if row["row"] in args.eval.split(","):
            metrics = evaluate_artefact(row["artefact"], args.data)
            row["image_auroc"], row["pixel_auroc"] = metrics["image_auroc"], metrics["pixel_auroc"]
            row["num_test_images"] = metrics.get("num_images")
            print(json.dumps({k: row[k] for k in ("row", "image_auroc", "pixel_auroc")}), flush=True)

    base = next((r for r in rows if r["row"] == "default"), rows[0])
    evaluated = {r["row"]: r for r in rows if "image_auroc" in r}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {stamp}: {args.data.name}, {base['num_fit_images']} fit images per build", "",
             f"`{' '.join([Path(sys.executable).name] + sys.argv)}` -- {platform.machine()}, {os.cpu_count()} cores; "
             "builds one after another in one run (compare ratios; the load average at each build's end is shown).",
             "", "| build | wall s | vs default | phases s | peak RSS MB | bank rows | load avg | image AUROC | "
             "pixel AUROC | vs exact (points) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # PatchCore rows against `exact` (the global greedy coreset), REB against `reb_exact` (exact LDKNN fit)
        exact = evaluated.get("reb_exact" if r["row"].startswith("reb") else "exact")
        auroc = ("| - | - | - |" if "image_auroc" not in r else
                 f"| {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | " + (
                     f"{100 * (r['image_auroc'] - exact['image_auroc']):+.2f} / "
                     f"{100 * (r['pixel_auroc'] - exact['pixel_auroc']):+.2f} |" if exact else "- |"))
        phases = ", ".join(f"{k} {v}" for k, v in r["timings_s"].items() if k != "total_before_export")
        lines.append(f"| {r['row']} (`{' '.join(ROWS[r['row']])}`) | {r['wall_s']} | {r['wall_s'] / base['wall_s']:.2f}x "
                     f"| {phases} | {r['peak_rss_mb']} | {r['bank_rows'] or '-'} | {r['load_average_at_end']} {auroc}")
    print("\n".join(lines))
    if not args.no_record:
        append_record(args.record, "Default build times side by side (bench/build_speed.py)", lines + [""])


if __name__ == "__main__":
    main()
