#!/usr/bin/env bash
# Full builds with the image score from the head vs from the smoothed map's maximum (issue 13), each evaluated
# with `adtk eval`: both arms of a row share every option but --image-score-from (same seed, split, fit and bank).
#   bench/image_score_builds.sh OUT_DIR "LABEL|DATA|BUILD ARGS" ...
# writes OUT_DIR/LABEL.{head,map_max}.{onnx,json,log}; tabulate with `python bench/image_score_table.py OUT_DIR/*.json`.
set -euo pipefail
out=$1; shift
mkdir -p "$out"
adtk=${ADTK:-.venv/bin/adtk}
for arm in "$@"; do
  IFS='|' read -r label data args <<<"$arm"
  for source in head map_max; do
    model="$out/$label.$source.onnx"
    start=$(date +%s)
    # shellcheck disable=SC2086  # args is a list of build flags
    "$adtk" build --data "$data" -o "$model" $args --image-score-from "$source" >"$out/$label.$source.log" 2>&1
    built=$(date +%s)
    "$adtk" eval "$model" --data "$data" --json "$out/$label.$source.json" >>"$out/$label.$source.log" 2>&1
    echo "$label $source: build $((built - start)) s, eval $(($(date +%s) - built)) s (machine loaded: not comparable)"
    rm -f "$model"  # no artefact is kept (the metrics are in the JSON)
  done
done
