"""Markdown table of bench/image_score_builds.sh's `adtk eval` JSON files: per row, head vs map_max side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    rows: dict[str, dict[str, dict]] = {}
    for path in map(Path, paths):
        label, source = path.name.removesuffix(".json").rsplit(".", 1)
        rows.setdefault(label, {})[source] = json.loads(path.read_text())
    print("| build | image AUROC head | image AUROC map_max | change (pts) | pixel AUROC | AU-PRO | F1 head | F1 map_max |")
    print("|---|---|---|---|---|---|---|---|")
    for label, arms in rows.items():
        head, mapmax = arms.get("head"), arms.get("map_max")
        if head is None or mapmax is None:
            continue
        change = 100 * (mapmax["image_auroc"] - head["image_auroc"])
        # the two arms share the map: pixel AUROC and AU-PRO must be equal (shown once, checked)
        same_map = all(abs((head[k] or 0) - (mapmax[k] or 0)) < 1e-6 for k in ("pixel_auroc", "au_pro"))
        pixel = f"{head['pixel_auroc']:.3f}" if same_map else f"{head['pixel_auroc']:.3f} / {mapmax['pixel_auroc']:.3f}"
        pro = f"{head['au_pro']:.3f}" if same_map else f"{head['au_pro']:.3f} / {mapmax['au_pro']:.3f}"
        print(f"| {label} | {head['image_auroc']:.4f} | {mapmax['image_auroc']:.4f} | {change:+.2f} | {pixel} | {pro} "
              f"| {head['f1']:.3f} | {mapmax['f1']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
