# adtk's scoring daemon on a Jetson, on NVIDIA's L4T JetPack image (CUDA, cuDNN, TensorRT from the JetPack).
#   docker build -f deploy/docker/l4t.Dockerfile -t adtk-serve:l4t \
#       --build-arg ONNXRUNTIME_GPU_WHEEL=onnxruntime_gpu-<version>-cp38-cp38-linux_aarch64.whl .
#   docker run --rm --runtime nvidia -p 8080:8080 -e ADTK_SERVE_TOKEN=secret \
#       -v /opt/models:/models:ro -v /dev/shm/frames:/frames:ro adtk-serve:l4t
# BASE_IMAGE: JetPack 5.1 (L4T r35, Python 3.8; Xavier NX, Orin) by default; for JetPack 6 (r36, Python 3.10)
# pass --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.2.0.
# ONNXRUNTIME_GPU_WHEEL: NVIDIA's onnxruntime-gpu wheel for that JetPack (PyPI's aarch64 onnxruntime is CPU-only),
# a file in the build context or a URL; left empty, the image uses PyPI's CPU onnxruntime and says so.
ARG BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r35.4.1

# Stage 1: the wheel (pure Python), built on the build machine's own platform: setuptools >= 77 needs
# Python >= 3.9, which JetPack 5's image does not have.
FROM --platform=$BUILDPLATFORM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY adtk adtk
COPY toolkit toolkit
COPY export export
COPY runtime runtime
COPY targets targets
RUN python3 -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps -w /wheels .

# Stage 2: the JetPack image + the runtime.
FROM ${BASE_IMAGE}
ARG ONNXRUNTIME_GPU_WHEEL=""
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/* && python3 -m pip install --no-cache-dir "pip>=23,<25"
COPY --from=wheel /wheels /wheels
COPY deploy/docker/install-runtime.sh /usr/local/bin/install-runtime.sh
RUN if [ -n "$ONNXRUNTIME_GPU_WHEEL" ]; then \
        python3 -m pip install --no-cache-dir "$ONNXRUNTIME_GPU_WHEEL" && install-runtime.sh /wheels serve; \
    else \
        echo "no ONNXRUNTIME_GPU_WHEEL given: onnxruntime from PyPI, CPU only" && install-runtime.sh /wheels cpu,serve; \
    fi && rm -r /wheels
RUN useradd --system --no-create-home adtk
USER adtk
EXPOSE 8080
ENTRYPOINT ["adtk", "serve"]
CMD ["/models/model.onnx", "--source", "/frames", "--sink", "-", "--http", "0.0.0.0:8080"]
