#!/usr/bin/env bash
# The GPU day in one command, on a lent GPU machine (PyTorch and CUDA there, no package index).
#
#   here, once:   python benchmarks/gpu_wheels.py      # what tilesam needs that the machine lacks, into .whl/
#   there:        the device tool's run with command "bash benchmarks/gpu_day.sh", carry [".whl"], timeout_s 600
#
# Installs the wheels and this checkout into /tmp/site, then runs, each under its own time limit so
# that a slow step leaves the next its time (seconds: GPU_CHECK_S, PRECISION_S):
#   1. benchmarks/gpu_check.py: tiles per second per stage for vit_b, vit_t, LiteMedSAM, the data path,
#      and snakemake end to end on a 4096^2 image and a 16 x 2048^2 volume (AIS), with each job's share
#      of time on tiles;
#   2. benchmarks/precision_check.py --device cuda: the GPU's bfloat16 against float32, AIS instances
#      of a vit_b with a fitted decoder.
# Tables and logs go to $OUT (what the device tool brings back), else benchmarks/out. Extra arguments
# go to gpu_check.py (e.g. --tiny to try the script on a CPU with GPU_DAY_NO_INSTALL=1).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
python=${PYTHON:-python3}
if [ -z "${GPU_DAY_NO_INSTALL:-}" ]; then
    $python -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site \
        .whl/*.whl . || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi || true; $python -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$out/machine.txt" 2>&1
status=0
timeout "${GPU_CHECK_S:-360}" $python benchmarks/gpu_check.py --out "$out/gpu_check.md" "$@" > "$out/gpu_check.log" 2>&1 || status=$?
tail -n 40 "$out/gpu_check.log"
timeout "${PRECISION_S:-200}" $python benchmarks/precision_check.py --out "$out/precision_check.md" \
    > "$out/precision_check.log" 2>&1 || status=$((status ? status : $?))
tail -n 8 "$out/precision_check.log"
exit $status
