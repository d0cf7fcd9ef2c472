# syntax=docker/dockerfile:1
# AdaFocusV3 inference server for a GPU host.
#   docker build -t adafocus-serve .
#   docker run --gpus all -p 8000:8000 -v $PWD/token:/run/secrets/operator_token:ro \
#       -e ADAFOCUS_OPERATOR_TOKEN_FILE=/run/secrets/operator_token adafocus-serve
#   docker build --build-arg EXTRAS=gpu,ray -t adafocus-serve:ray .   # with Ray Serve, for `adafocus serve-ray`
# torch==2.13.0's default PyPI wheel is its CUDA 13.0 build (it brings its own CUDA libraries as wheels);
# the base image supplies the matching CUDA runtime and the NVIDIA container-toolkit labels.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ---- builder: a virtual environment with torch (CUDA build) and the package, bundle included ----
FROM ${CUDA_IMAGE} AS builder
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The biggest layer first, so that a source change does not download torch again.
RUN pip install torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
COPY exporters/ exporters/
COPY loadtest/ loadtest/
COPY fleet/ fleet/
# A regular (non-editable) install: the shipped bundle model/bundles/default travels as package data. Then load it
# from the installed package (-I: not from /src) so that a bundle missing from the wheel or failing its hash check
# fails the build, not the first start.
RUN pip install . \
    && python -I -c "from model.bundle import load_bundle; b = load_bundle(); print(b.path, b.config.name, b.sha256)"
# EXTRAS: `gpu` (the default) adds PyNvVideoCodec, NVIDIA's hardware video decoder (ADAFOCUS_DECODER=auto uses it
# when the container sees a GPU with the `video` capability); `gpu,ray` adds Ray Serve for `adafocus serve-ray`
# (about 490 MB); versions are pinned in pyproject.toml.
ARG EXTRAS="gpu"
# hadolint ignore=DL3013
RUN if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; fi

# ---- runtime: the CUDA runtime, Python and the virtual environment; no compilers, no sources ----
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# NOTE: apt packages follow the base image's Ubuntu release (its security updates), so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 adafocus \
    && useradd --system --uid 10001 --gid adafocus --home-dir /home/adafocus --create-home --shell /usr/sbin/nologin adafocus
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ADAFOCUS_HOST=0.0.0.0 \
    ADAFOCUS_PORT=8000 \
    ADAFOCUS_DEVICE=auto \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
USER 10001:10001
WORKDIR /home/adafocus
EXPOSE 8000
# Liveness only (readiness is /readyz). The server listens once the bundle is loaded, warmed up and the decoder
# self-tested; --start-period covers that.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADAFOCUS_PORT', '8000'), timeout=2)"]
# The operator token is never baked in: ADAFOCUS_OPERATOR_TOKEN (env file) or ADAFOCUS_OPERATOR_TOKEN_FILE (secret).
ENTRYPOINT ["adafocus"]
CMD ["serve"]
