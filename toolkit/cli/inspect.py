from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from adtk.runtime.errors import one_line
from adtk.runtime.extras import missing_extra_message


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON document.")
@click.option("--config", "as_config", is_flag=True,
              help="Print only the build options the artefact was made with, as YAML for `adtk build --config`.")
def command(model, as_json, as_config):
    """Show an artefact's manifest, size, inputs/outputs and operators (after verifying it).

    \b
    JSON keys: path, bytes, sha256, file_sha256, inputs, outputs, operators {op: count}, manifest.
    """
    from adtk.runtime.artefact import read_artefact

    artefact = read_artefact(model)
    if as_config:
        click.echo(_build_config_text(artefact.manifest, model), nl=False)
        return
    inputs, outputs, operators = _describe_graph(artefact.model_bytes)
    info = {
        "path": str(model), "bytes": len(artefact.model_bytes), "sha256": artefact.sha256,
        "file_sha256": artefact.file_sha256, "inputs": inputs, "outputs": outputs, "operators": operators,
        "manifest": artefact.manifest,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    try:
        _print_summary(model, artefact, info, operators)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # a backstop: the schema (runtime/manifest.py) checks the sections read here, the optional ones
        # (tiling, ensemble, the recipe search) too, so only a shape it does not pin down gets this far (a
        # re-sealed edit). Say so; --json shows the manifest as stored.
        from adtk.runtime.errors import ArtefactError

        raise ArtefactError(f"{model}: the manifest has a malformed section ({type(exc).__name__}: {exc}); it was "
                            "edited after the build. `adtk inspect --json` prints it as stored") from None


def _say(line: str) -> None:
    """One line of the summary, its non-printable characters escaped: the manifest's strings are the builder's,
    or an attacker's who re-sealed the file (a newline would forge a line, ESC codes would reach the terminal)."""
    click.echo(one_line(line))


def _print_summary(model, artefact, info: dict, operators) -> None:
    m = artefact.manifest
    _say(f"{model}: {info['bytes'] / 1e6:.2f} MB, integrity OK (sha256 {artefact.sha256[:16]}...)")
    _say(f"method    {m['method']['name']} {json.dumps(m['method']['params'])}")
    _say(f"fit       {json.dumps(m['method'].get('fit', {}))}")
    members = m["ensemble"]["members"] if m.get("ensemble") else [{"backbone": m["backbone"]}]
    for number, member in enumerate(members):
        backbone = member["backbone"]
        label = "backbone " if len(members) == 1 else f"member {number + 1} "
        _say(f"{label} {backbone['name']} {backbone['stages']} strides {backbone.get('strides')} weights "
             f"{backbone['weights_source']}")
    if m.get("ensemble"):
        _say(f"ensemble  {m['ensemble']['combine']}")
    height, width = m["input"]["model_size_px"]
    tiling = m["input"].get("tiling")
    tiles = (f"; {tiling['grid'][0] * tiling['grid'][1]} tiles of {tiling['tile_px']} px ({tiling['grid'][0]}x"
             f"{tiling['grid'][1]}, rows at {tiling['row_starts']}, columns at {tiling['col_starts']})" if tiling else "")
    _say(f"input     {m['input']['layout']} uint8 {m['input']['channels']} any size -> {height}x{width} px "
         f"(HxW){tiles}; maps [B, {height}, {width}]")
    postprocess = m["postprocess"]
    image_score_from = postprocess.get("image_score_from", "head")  # artefacts built before the field took the head's
    _say(f"score     image score from {image_score_from} ("
         + ("the method's own" if image_score_from == "head" else "max of the smoothed anomaly map")
         + f"); map blur sigma {postprocess['blur_sigma']:g}")
    cal = m["calibration"]
    _say(f"threshold {cal['threshold']:.5g} ({cal['method']})")
    _say(f"training  {m['training']['num_fit_images']} images, list sha256 {m['training']['list_sha256'][:16]}...")
    search = m["training"].get("recipe_search")
    if search:  # adtk build --method auto: what it chose among how many, on what
        chosen = search["chosen"]
        tried = sum(c.get("status", "validated") == "validated" for c in search["candidates"])
        _say(f"auto      chose {chosen['method']} {chosen['backbone']} {chosen['stages']}"
             + (f" + {', '.join(chosen['ensemble'])}" if chosen.get("ensemble") else "")
             + f" size {chosen['image_size_px']}" + (f" tile {chosen['tile']}" if chosen.get("tile") else "")
             + f", coreset {chosen['coreset_ratio']}: validation AUROC {chosen['validation_auroc']} on "
             f"synthetic defects, predicted {chosen['predicted_ms']} ms on {search['costed_on']}; {tried} of "
             f"{len(search['candidates'])} candidates validated"
             + (f", {len(search['skipped_for_time'])} skipped for time" if search.get("skipped_for_time") else "")
             + f" (search {search['search_s']} s)")
    for io_name, values in (("inputs", info["inputs"]), ("outputs", info["outputs"])):
        _say(f"{io_name:<9} " + ", ".join(f"{v['name']} {v['dtype']}{v['shape']}" for v in values))
    if operators is None:
        _say(f"operators (not listed: {missing_extra_message('onnx', 'listing them')})")
    else:
        _say("operators " + ", ".join(f"{op} x{n}" for op, n in operators.items()))


def _describe_graph(model_bytes: bytes):
    """(inputs, outputs, {op: count}) with the onnx package; without it (a device's core install), inputs and
    outputs from onnxruntime and operators None."""
    try:
        import onnx
    except ModuleNotFoundError:
        from adtk.runtime.extras import require

        session = require("onnxruntime", "adtk inspect").InferenceSession(model_bytes,
                                                                          providers=["CPUExecutionProvider"])
        inputs, outputs = ([{"name": v.name, "dtype": _ORT_DTYPES.get(v.type, v.type), "shape": list(v.shape)}
                            for v in values] for values in (session.get_inputs(), session.get_outputs()))
        return inputs, outputs, None
    proto = onnx.load_from_string(model_bytes)

    def describe(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    operators = dict(Counter(node.op_type for node in proto.graph.node).most_common())
    return describe(proto.graph.input), describe(proto.graph.output), operators


# onnxruntime's type strings -> the numpy dtype names the onnx path prints.
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16",
               "tensor(bool)": "bool", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _build_config_text(manifest: dict, model) -> str:
    """The manifest's build_config as YAML (JSON where PyYAML is absent: YAML reads JSON too)."""
    from adtk.runtime.errors import ArtefactError

    config = manifest.get("build_config")
    if not isinstance(config, dict):
        raise ArtefactError(f"{model}: no build options recorded (built by an adtk from before they were); "
                            "`adtk inspect` shows what the manifest has")
    try:
        import yaml
    except ModuleNotFoundError:
        return json.dumps(config, indent=2) + "\n"
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
