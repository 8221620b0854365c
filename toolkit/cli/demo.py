from __future__ import annotations

from pathlib import Path

import click

from adtk.toolkit.cli.progress import progress_factory


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("adtk-demo"), show_default=True,
              help="Folder for the example data set and the artefact.")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True)
@click.option("--random-weights", is_flag=True, help="Use random backbone weights (no pretrained weights needed).")
def command(out, backbone, random_weights):
    """Make a small example data set, build a PatchCore artefact on it, evaluate it and score two images."""
    import json

    from adtk.runtime.detector import Detector
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.cli.tables import format_table
    from adtk.toolkit.demo import make_example_dataset
    from adtk.toolkit.evaluate import evaluate_artefact

    data = out / "data"
    index = make_example_dataset(data)
    click.echo(f"example data set: {data} ({len(index.train)} train, {len(index.test)} test images)")
    config = BuildConfig(data=data, out=out / "model.onnx", method="patchcore",
                         method_params={"coreset_ratio": 0.1}, backbone=backbone, random_weights=random_weights,
                         image_size_px=256)
    result = build(config, log=lambda m: click.echo(m, err=True), progress_factory=progress_factory, index=index)
    click.echo(f"artefact: {result.artefact} ({result.artefact.stat().st_size / 1e6:.1f} MB)")
    with progress_factory(len(index.test), "eval") as bar:
        metrics = evaluate_artefact(result.artefact, data, progress=bar.update)
    click.echo(format_table(metrics))
    detector = Detector.load(result.artefact)
    good = next(s for s in index.test if s.label == 0)
    bad = next(s for s in index.test if s.label == 1)
    for sample in (good, bad):
        prediction = detector.predict([str(sample.path)])
        click.echo(json.dumps({"path": str(sample.path), "pred_score": round(float(prediction.pred_score[0]), 4),
                               "pred_label": bool(prediction.pred_label[0])}))
