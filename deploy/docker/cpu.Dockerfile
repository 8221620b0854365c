# adtk's scoring daemon on a CPU (x86_64 or arm64): the runtime core + onnxruntime (CPU) + the [serve] extra.
#   docker build -f deploy/docker/cpu.Dockerfile -t adtk-serve:cpu .          (from the repository root)
#   docker run --rm -p 8080:8080 -e ADTK_SERVE_TOKEN=secret \
#       -v "$PWD/models:/models:ro" -v "$PWD/frames:/frames:ro" adtk-serve:cpu
# Scores every image that appears in /frames with /models/model.onnx, prints JSON lines, serves the HTTP API
# on :8080 (a non-loopback bind needs the token), and hot-swaps a new verified artefact dropped in /models.

# Stage 1: the wheel (pure Python). Building needs setuptools >= 77, fetched by pip's build isolation.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY adtk adtk
COPY toolkit toolkit
COPY export export
COPY runtime runtime
COPY targets targets
RUN python3 -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps -w /wheels .

# Stage 2: the runtime only (no torch, no onnx).
FROM python:3.11-slim
COPY --from=wheel /wheels /wheels
COPY deploy/docker/install-runtime.sh /usr/local/bin/install-runtime.sh
RUN install-runtime.sh /wheels cpu,serve && rm -r /wheels
RUN useradd --system --no-create-home adtk
USER adtk
EXPOSE 8080
ENTRYPOINT ["adtk", "serve"]
CMD ["/models/model.onnx", "--source", "/frames", "--sink", "-", "--http", "0.0.0.0:8080"]
