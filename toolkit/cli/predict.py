from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", default="auto", show_default=True, help="auto, tensorrt (engine), onnxruntime, cpu, cuda or ort-tensorrt.")
@click.option("--skip-bad", is_flag=True, help="Report undecodable images as errors and go on.")
@click.option("--overlays", "overlay_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write one PNG per image into DIR: the map coloured above its threshold, the defect region "
                   "outlined, label and score on the frame (named after the image, folders kept).")
def command(model, images, backend, skip_bad, overlay_dir):
    """Score IMAGES (files or folders, searched recursively) with MODEL; one JSON line per image, keyed by the
    artefact's output names: path, pred_score (0..1, 0.5 = threshold), pred_label, raw_score.

    \b
    JSON line: {"path": str, "pred_score": float, "pred_label": bool, "raw_score": float}
    With --overlays DIR, also "overlay": the PNG written.
    With --skip-bad, an undecodable image gives {"path": str, "error": str}.
    """
    from adtk.runtime.detector import Detector, as_frame
    from adtk.runtime.errors import DataError, unicode_text
    from adtk.runtime.images import expand_image_paths

    detector = Detector.load(model, backend=backend)
    overlays_written = set()
    for path, name in expand_image_paths(images):
        # JSON records carry names as valid Unicode: a name's undecodable bytes as the text \udcff, not as a lone
        # surrogate escape that strict JSON parsers refuse
        shown = unicode_text(str(path))
        try:
            image = as_frame(path, str(path), detector.max_pixels)  # decoded, then e.g. a frame under 16 px refused
            prediction = detector.predict(image[None])
        except DataError as exc:
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            if not skip_bad:
                raise DataError(message) from None
            click.echo(json.dumps({"path": shown, "error": unicode_text(message)}))
            continue
        record = {"path": shown, "pred_score": round(float(prediction.pred_score[0]), 6),
                  "pred_label": bool(prediction.pred_label[0]),
                  "raw_score": round(float(prediction.raw_score[0]), 6)}
        if overlay_dir is not None:
            from adtk.runtime.overlay import render_overlay, save_png

            picture = render_overlay(image, prediction.anomaly_map[0], record["pred_score"], record["pred_label"],
                                     caption=str(name))
            target = overlay_dir / name.with_suffix(".png")
            if target in overlays_written:  # ok.png and ok.jpg side by side: the second keeps its own suffix
                target = overlay_dir / name.with_name(name.name + ".png")
            overlays_written.add(target)
            record["overlay"] = unicode_text(str(save_png(picture, target)))
        click.echo(json.dumps(record))
