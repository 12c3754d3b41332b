#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the gpu-marked tests (CUDAPlugin,
# a fit on the GPU, a digits study trained by a GPU worker), the trainer
# overhead benchmark and, on a host of several GPUs, the DDP scaling benchmark.
# Each writes its log under OUT_DIR; the exit code is non-zero when any failed.
#
#   bench/gpu_checks.sh [OUT_DIR]        (default: gpu-checks)
#
# PYTHON (default python3) must have torch with CUDA and the service's
# dependencies; the project itself may be installed or run from this tree.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-checks}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u +%Y-%m-%dT%H:%MZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} 2>&1 | tee "$out/device.txt"
"$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"' || exit 2

status=0
"$py" -m pytest -p no:cacheprovider -m "gpu and not postgres" -o addopts="-ra" \
    tests/helios_tests/test_plugins.py tests/e2e/test_gpu_digits.py 2>&1 | tee "$out/gpu-tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
gpus=$("$py" -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -gt 1 ]; then  # trials on several ranks: one GPU per rank
    "$py" bench/ddp_scaling.py --ranks 1 "$gpus" 2>&1 | tee "$out/ddp-scaling.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
"$py" bench/trainer_overhead.py --rounds 7 2>&1 | tee "$out/trainer-overhead.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
