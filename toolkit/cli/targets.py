from __future__ import annotations

import json

import click


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as one JSON document.")
@click.option("--sources", is_flag=True, help="Show where every figure comes from.")
def command(as_json, sources):
    """List the device targets `adtk build --target` and `adtk compile` accept (targets/*.yaml).

    \b
    JSON: a list of objects with every Target field (name, runtime, tensorrt_version, precisions,
    fp16_tflops, int8_tops, memory_gb, frame_budget_ms, ...) and `sources` {field: citation}.
    """
    from dataclasses import asdict

    from adtk.export.targets import list_targets, load_target

    targets = [load_target(name) for name in list_targets()]
    if as_json:
        click.echo(json.dumps([asdict(t) for t in targets], indent=2))
        return
    click.echo(f"{'target':<15} {'runtime':<12} {'TensorRT':<9} {'precisions':<16} {'fp16 TF':>8} {'int8 TO':>8} "
               f"{'mem GB':>6} {'budget ms':>9}")
    for t in targets:
        click.echo(f"{t.name:<15} {t.runtime:<12} {t.tensorrt_version or '-':<9} {','.join(t.precisions):<16} "
                   f"{t.fp16_tflops:>8.2f} {t.int8_tops:>8.1f} {t.memory_gb:>6.0f} {t.frame_budget_ms:>9.1f}")
        if sources:
            for key, source in t.sources.items():
                click.echo(f"    {key}: {source}")
