from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", default="auto", show_default=True, help="auto, tensorrt (engine), onnxruntime, cpu, cuda or ort-tensorrt.")
@click.option("--skip-bad", is_flag=True, help="Report undecodable images as errors and go on.")
def command(model, images, backend, skip_bad):
    """Score IMAGES with MODEL; one JSON line per image: path, score (0..1, 0.5 = threshold), label.

    \b
    JSON line: {"path": str, "score": float, "label": bool, "raw_score": float}
    With --skip-bad, an undecodable image gives {"path": str, "error": str}.
    """
    from adtk.runtime.detector import Detector
    from adtk.runtime.errors import DataError

    detector = Detector.load(model, backend=backend)
    for path in images:
        try:
            prediction = detector.predict([str(path)])
        except DataError as exc:
            if not skip_bad:
                raise
            click.echo(json.dumps({"path": str(path), "error": str(exc)}))
            continue
        click.echo(json.dumps({"path": str(path), "score": round(float(prediction.pred_score[0]), 6),
                               "label": bool(prediction.pred_label[0]),
                               "raw_score": round(float(prediction.raw_score[0]), 6)}))
