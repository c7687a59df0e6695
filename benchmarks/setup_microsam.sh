#!/usr/bin/env bash
# Create the virtual environment that benchmarks/vs_microsam.py runs micro-sam in.
#
# micro-sam lives in its own environment (it pulls napari, PyQt6, torch-em, python-elf, ...), so
# that neither project's pins touch the other. torch and torchvision are installed as one matched
# pair first, so micro-sam's dependencies cannot pull an unmatched torchvision.
#
# Usage: benchmarks/setup_microsam.sh [VENV_DIR]
#   VENV_DIR defaults to $TILESAM_MICROSAM_VENV, else benchmarks/.venv-microsam (git-ignored).
# Prints the install time and the environment's size at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-${TILESAM_MICROSAM_VENV:-$here/.venv-microsam}}"
python="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
MICRO_SAM_VERSION="${MICRO_SAM_VERSION:-1.8.14}"

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
"$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "micro_sam==$MICRO_SAM_VERSION"
# micro-sam runs vit_t through MobileSAM's `mobile_sam` module, which is not on the package index
# under its own name; `mobilesam-mirror` packages the same module (no dependencies beyond timm,
# which micro-sam already pulls in).
"$venv/bin/python" -m pip install --quiet --no-deps "mobilesam-mirror==1.0.0"
# The import that vs_microsam.py's driver needs; fails loudly if the environment is broken.
QT_QPA_PLATFORM=offscreen "$venv/bin/python" -c \
    "import micro_sam, micro_sam.automatic_segmentation, mobile_sam, torch, torchvision; \
print('micro_sam', micro_sam.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
end=$(date +%s)
echo "micro-sam environment: $venv"
echo "install time: $((end - start)) s; size: $(du -sh "$venv" | cut -f1)"
