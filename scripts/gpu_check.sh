#!/usr/bin/env bash
# One call that proves the GPU path (scripts/gpu_check.py lists the steps): install the carried wheels, run the
# gpu-marked tests and every benchmark on the device, write each figure to a results file (and to $OUT if set).
#
#   bash scripts/gpu_check.sh                      # on a machine with a CUDA device (= make gpu-check)
#   bash scripts/gpu_check.sh --device cpu --quick # the dry run: the same steps at toy sizes
#
# The machine needs Python 3.12 with torch and the libraries it already has; what it lacks travels as wheels in
# .whl/ (make gpu-wheels, here), installed with --no-index --no-deps into a scratch folder put first on PYTHONPATH.
# PYTHON (default python3) is the interpreter; GPU_CHECK_WHEELS (default .whl) the wheel folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=$(mktemp -d "${TMPDIR:-/tmp}/magicbokeh_gpu_site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
  echo "installing ${#wheels[@]} carried wheels from $WHEELS/ (--no-index --no-deps) into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
else
  echo "no wheels in $WHEELS/ (run 'make gpu-wheels' where pip can reach PyPI): using the installed packages"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAGICBOKEH_GPU_CHECK_SITE="$SITE" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
"$PYTHON" scripts/gpu_check.py "$@"
