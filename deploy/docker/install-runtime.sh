#!/bin/sh
# Install adtk's device runtime from the wheel in WHEEL_DIR with EXTRAS into the python3 on PATH; used by both
# Dockerfiles, and run as is by tests/test_docker.py in a fresh venv (the image builds are not run here).
#   install-runtime.sh WHEEL_DIR EXTRAS        e.g.  install-runtime.sh /wheels cpu,serve
set -eu
wheel=$(ls "$1"/adtk-*.whl)
python3 -m pip install --no-cache-dir --disable-pip-version-check "${wheel}[$2]"
python3 -c "import adtk, adtk.runtime.detector, onnxruntime; print('adtk', adtk.__version__, 'runtime installed, onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
