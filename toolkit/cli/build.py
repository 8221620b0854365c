from __future__ import annotations

from pathlib import Path

import click

from adtk.toolkit.cli.progress import log_info, progress_factory
from adtk.runtime.manifest import IMAGE_SCORE_SOURCES
from adtk.toolkit.data_layouts import LAYOUT_OPTIONS, data_layout_options


def parse_params(pairs: tuple[str, ...]) -> dict:
    """--param key=value (value parsed as JSON where it can be: 0.1 -> float, 9 -> int, null -> None)."""
    import json

    from adtk.runtime.errors import ConfigError

    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--param {pair!r}: expected key=value, e.g. --param coreset_ratio=0.01")
        key, value = pair.split("=", 1)
        try:
            params[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip().replace("-", "_")] = value
    return params


# Options of `adtk build` that are not BuildConfig fields (everything else is one, under the same name).
CLI_ONLY = frozenset({"config_file", "print_config", "as_json", "engine", "params", "coreset_ratio", "num_neighbors",
                      "backbones", *LAYOUT_OPTIONS})


@click.command("build")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="YAML file of build options (BuildConfig's field names, e.g. `method: padim`, `image_size_px: "
                   "224`, `method_params: {coreset_ratio: 0.05}`); flags given on the command line override it. "
                   "`adtk inspect MODEL --config` prints the one an artefact was built with.")
@click.option("--print-config", is_flag=True, help="Print the resolved build options as YAML and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as one JSON document on stdout (logs and progress stay on stderr).")
@click.option("--method", "method", default="patchcore", show_default=True,
              help="Detector (see `adtk build --help`), or `auto`: choose method, backbone, stages, size and bank "
                   "size on synthetic defects in held-out good images, within --target's frame budget.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="MVTec-style folder (train/good, ...) or a plain folder of good images.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Artefact to write (.onnx).")
@data_layout_options
@click.option("--backbone", "backbones", multiple=True, metavar="NAME[:STAGES]",
              help="timm backbone (default tf_efficientnet_lite0), optionally with its stages, e.g. "
                   "tf_efficientnet_lite0:blocks.1,blocks.2,blocks.4 (blocks.1 = stride 4, for thin defects). Repeat "
                   "for an ensemble in one artefact: each member's scores are standardised on held-out good images "
                   "and averaged.")
@click.option("--stages", default=None, help="Comma-separated feature stages of the (first) backbone, e.g. "
                                             "blocks.2,blocks.4; a wrong name lists the valid ones.")
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Local backbone weights (.safetensors / .pth state dict).")
@click.option("--random-weights", is_flag=True, help="Random backbone weights (tests and size checks only).")
@click.option("--size", "image_size_px", default=None, metavar="auto|N|HxW|auto:PIXELS",
              help="Model input size. auto (default): 256x256 for near-square training images (up to 4:3), "
                   "otherwise their median aspect ratio at their own median short side within 256..512 px "
                   "(tall frames are neither squashed nor shrunk; the bank keeps its 256-px rows; with --target "
                   "the short side is 256 px). N: N x N, every frame squashed (anomalib's way); HxW (e.g. 256x640); auto:PIXELS: the "
                   "aspect ratio at a pixel budget. Sides are rounded to the backbone's stride. With --tile: the size "
                   "the tiles are cut from (N = its short side, aspect kept; auto = short side at the tile size).")
@click.option("--tile", default=None, metavar="SIZE[:OVERLAP]",
              help="Score overlapping SIZE x SIZE tiles of the aspect-kept frame in one batch inside the artefact "
                   "(image score = max over tiles, maps stitched); OVERLAP = least overlap in px (default SIZE/4).")
@click.option("--coreset-ratio", type=float, default=None, help="Coreset ratio (memory-bank methods).")
@click.option("--num-neighbors", type=int, default=None, help="Neighbours for the image-score re-weighting.")
@click.option("--param", "params", multiple=True, help="Any method parameter as key=value (repeatable).")
@click.option("--calib-fraction", type=float, default=0.1, show_default=True,
              help="Fraction of train/good held out to calibrate the threshold.")
@click.option("--max-train-images", type=int, default=None, help="Use a seeded subset of this many images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip undecodable images with a warning instead of stopping.")
@click.option("--refine", default=None, metavar="SPEC",
              help="Drop suspected defects from the training images before the fit: sroc:R (drop the top R "
                   "fraction as scored by this method), sroc:R:DETECTOR (scored by DETECTOR, e.g. "
                   "sroc:0.2:mahalanobis), paire (PaIRE's iterative trimming) or auto[:DETECTOR] (no rate needed: "
                   "a Gaussian refiner, PaDiM unless the method is one, estimates how many images are outliers "
                   "of its score distribution; that many are dropped, ranked by the rank sum of its scores and "
                   "per-position LOF; auto:DETECTOR ranks by DETECTOR's scores alone). Kept/dropped images are "
                   "written to ARTEFACT.training.json.")
@click.option("--defects-from-test", "defects_from_test", default=None, metavar="TYPES",
              help="Comma-separated test/<type> folders whose images and masks methods that learn from labelled "
                   "defects (semlp, labeled-patchcore) may fit on, besides DATA/defects/<type>/.")
@click.option("--image-score-from", type=click.Choice(list(IMAGE_SCORE_SOURCES)), default=None,
              help="Where the image score (pred_score, pred_label, and the threshold's calibration) comes from: head "
                   "= the method's own image score, map_max = the maximum of the smoothed anomaly map the artefact "
                   "outputs (stitched when tiled, the members' mean in an ensemble). Default: the method's (`adtk inspect` "
                   "shows which an artefact took).")
@click.option("--target", default=None, help="Device to build for (see `adtk targets`): sizes, checks, records.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="auto = the target's default (fp32 without a target).")
@click.option("--max-auroc-drop", type=float, default=0.01, show_default=True,
              help="Refuse a precision whose image AUROC is lower than fp32's by more than this (0.01 = 1 point).")
@click.option("--check-images", type=int, default=200, show_default=True,
              help="Held-out images the precision check scores.")
@click.option("--engine", is_flag=True, help="Also build a TensorRT engine for --target (needs tensorrt).")
@click.pass_context
def command(ctx, config_file, print_config, as_json, method, data, out, backbones, stages, weights, random_weights,
            image_size_px, tile, coreset_ratio, num_neighbors, params, calib_fraction, max_train_images, seed, skip_bad,
            image_score_from, target, precision, max_auroc_drop, check_images, engine, refine=None, defects_from_test=None,
            **layout):
    """Fit a detector on DATA and compile it into one ONNX artefact."""
    import json

    from adtk.runtime.errors import ConfigError
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.build_config import config_from_dict, config_to_dict, config_to_yaml, read_config_file
    from adtk.toolkit.ensemble import parse_backbone_choice

    method_params = parse_params(params)
    first = parse_backbone_choice(backbones[0]) if backbones else None
    if first is not None and first.stages and stages:
        raise ConfigError(f"--backbone {backbones[0]} names its stages and --stages is given too; give them once")
    backbone = first.name if first else "tf_efficientnet_lite0"
    stages = ",".join(first.stages) if first and first.stages else stages
    if image_size_px is None:  # geometry.py: near-square -> 256 x 256, else aspect kept (with --tile: short side
        image_size_px = "auto"  # at the tile size)
    for key, value in (("coreset_ratio", coreset_ratio), ("num_neighbors", num_neighbors)):
        if value is not None:
            method_params[key] = value
    from_flags = BuildConfig(
        data=data, out=out, method=method, method_params=method_params, backbone=backbone,
        stages=tuple(s.strip() for s in stages.split(",")) if stages else None, weights=weights,
        random_weights=random_weights, image_size_px=image_size_px, tile=tile, calib_fraction=calib_fraction,
        max_train_images=max_train_images, seed=seed, skip_bad=skip_bad, refine=refine,
        defects_from_test=tuple(t.strip() for t in defects_from_test.split(",") if t.strip()) if defects_from_test else (),
        image_score_from=image_score_from, target=target, precision=precision, max_auroc_drop=max_auroc_drop,
        check_images=check_images, ensemble=tuple(backbones[1:]), data_layout={key: value for key, value in layout.items() if value is not None},
    )
    config = config_from_dict(resolve_options(ctx, from_flags, read_config_file(config_file) if config_file else {}),
                              "adtk build")
    if print_config:
        click.echo(config_to_yaml(config_to_dict(config)), nl=False)
        return
    if engine and not config.target:
        raise ConfigError("--engine needs --target (the engine is built for one device)")
    say = log_info if as_json else click.echo  # with --json, stdout holds only the JSON document
    if config.method == "auto":
        from adtk.toolkit.recipe_search import search_and_build

        result = search_and_build(config, log=log_info, progress_factory=progress_factory)
        say(f"candidates: {result.artefact}.candidates.md (and .json); chosen: "
            f"{result.manifest['training']['recipe_search']['chosen']}")
    else:
        result = build(config, log=log_info, progress_factory=progress_factory)
    size_mb = result.artefact.stat().st_size / 1e6
    fit = result.manifest["method"]["fit"]
    say(f"wrote {result.artefact} ({size_mb:.1f} MB; {fit}); "
        f"timings {', '.join(f'{k} {v:.1f}s' for k, v in result.timings_s.items())}")
    engine_path = None
    if engine:
        from adtk.export.tensorrt import build_engine

        engine_path = build_engine(result.artefact, config.target, log=log_info)
        say(f"wrote {engine_path} (TensorRT engine) and {engine_path}.json (its metadata)")
    refinement = result.manifest["training"].get("refinement")
    if refinement:
        say(f"refine {refinement['spec']}: dropped {refinement['num_dropped']} of "
            f"{refinement['num_candidates']} training images (list: {refinement['list_file']})")
    if as_json:
        click.echo(json.dumps({"artefact": str(result.artefact), "bytes": result.artefact.stat().st_size,
                               "engine": str(engine_path) if engine_path else None,
                               "timings_s": result.timings_s, "manifest": result.manifest}, indent=2))
        return
    say("next:")
    say(f"  adtk eval {result.artefact} --data {config.data}")
    say(f"  adtk predict {result.artefact} IMAGE...")
    say(f"  adtk inspect {result.artefact}")


def resolve_options(ctx: click.Context, from_flags, from_file: dict) -> dict:
    """The build's options, lowest precedence first: the flags' defaults, the --config file, the flags given.
    A flag counts as given when it is on the command line (or in the environment); it sets the BuildConfig field
    of its own name (--backbone: backbone, stages and ensemble), and --param/--coreset-ratio/--num-neighbors and the
    layout flags set keys of method_params and data_layout."""
    from click.core import ParameterSource

    from adtk.toolkit.build_config import config_to_dict

    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    if "backbones" in given:
        given |= {"backbone", "stages", "ensemble"}
    flag_values = {key: value for key, value in config_to_dict(from_flags).items() if value is not None}
    resolved = {**flag_values, **from_file}
    resolved.update({key: flag_values[key] for key in given - CLI_ONLY if key in flag_values})
    for merged in ("method_params", "data_layout"):  # dicts: the flags' keys over the file's
        resolved[merged] = {**from_file.get(merged, {}), **getattr(from_flags, merged)}
    return resolved
