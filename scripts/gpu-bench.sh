#!/usr/bin/env bash
# The GPU checks and the GPU benchmark of docs/benchmarks.md, in one command on a CUDA host (under 8 minutes).
#   scripts/gpu-bench.sh wheels         here, where pip reaches a package index: PyAV as a wheel into .whl/
#                                       (git-ignored) for a GPU host that has no index (Python 3.12, x86-64)
#   scripts/gpu-bench.sh run [OUT_DIR]  on the GPU host, from the repository root: installs .whl/*.whl when present,
#                                       then (1) the runner tests (CUDA graphs give the eager answers) and the NVDEC
#                                       decoder's (its frames against the CPU decoder's), (2) the
#                                       benchmark (python -m loadtest.bench.gpu_suite): OUT_DIR/gpu_suite.{json,md,log}
# `run` needs python3 with torch (CUDA), numpy, onnx, onnxruntime, onnxscript, safetensors, tqdm and pytest (a stock
# PyTorch GPU image has them) plus PyAV; no FastAPI: the tests run without the service's conftest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

case "${1:-run}" in
wheels)
    [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    version=$("$PY" -c 'import av; print(av.__version__)')
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "av==$version" "pynvvideocodec==2.2.4"  # the gpu extra: NVDEC decoding (model/video_nvdec.py)
    ls -l .whl
    ;;
run)
    out=${2:-${OUT:-gpu-bench-out}}
    mkdir -p "$out"
    if compgen -G '.whl/*.whl' >/dev/null; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    nvidia-smi -L || echo "no nvidia-smi"
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
    set -o pipefail
    tests=0  # the benchmark runs even when a test fails; the script's status reports both
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider --noconftest tests/service/engine/runners/test_torch_runner.py \
        tests/model/test_video_nvdec.py \
        2>&1 | tee "$out/gpu_tests.log" || tests=$?
    timeout 420 "$PY" -m loadtest.bench.gpu_suite --time-limit 300 --out "$out/gpu_suite.json" \
        2> >(tee "$out/gpu_suite.log" >&2) | tee "$out/gpu_suite.md"
    if [ "$tests" != 0 ]; then
        echo "GPU runner tests FAILED (status $tests; see $out/gpu_tests.log)" >&2
        exit "$tests"
    fi
    ;;
*)
    echo "usage: $0 wheels | run [OUT_DIR]" >&2
    exit 2
    ;;
esac
