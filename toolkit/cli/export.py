from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--triton", "triton_repo", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write a Triton model repository entry REPO_DIR/<name>/{config.pbtxt, 1/model.onnx}.")
@click.option("--name", default=None, help="Triton model name (default: the artefact's file stem).")
@click.option("--max-batch-size", type=int, default=8, show_default=True, help="Triton max_batch_size.")
@click.option("--deepstream", "deepstream_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write a fixed-size float NCHW variant and its Gst-nvinfer config file into DIR.")
def command(model, triton_repo, name, max_batch_size, deepstream_dir):
    """Hand MODEL (a built artefact, verified first) to Triton Inference Server or DeepStream.

    \b
    --triton REPO_DIR: onnxruntime backend, input frames uint8 [-1, -1, 3], dynamic batching, outputs with
      the names, types and shapes of the artefact's graph.
    --deepstream DIR: DIR/<stem>_deepstream.onnx (input float32 [B, 3, S, S], RGB 0..255; bool outputs as
      float 0/1) and DIR/config_infer_adtk.txt for Gst-nvinfer.
    """
    from adtk.export.serving import export_deepstream, export_triton

    if triton_repo is None and deepstream_dir is None:
        raise click.UsageError("give --triton REPO_DIR, --deepstream DIR, or both")
    if triton_repo is not None:
        entry = export_triton(model, triton_repo, name=name, max_batch_size=max_batch_size)
        click.echo(f"Triton model repository entry written: {entry} (tritonserver --model-repository {triton_repo})")
    if deepstream_dir is not None:
        folder = export_deepstream(model, deepstream_dir)
        click.echo(f"DeepStream variant written: {folder} (config-file-path={folder / 'config_infer_adtk.txt'})")
