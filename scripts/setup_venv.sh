#!/usr/bin/env bash
# Create .venv/ and install the pinned environment (called by `make setup`).
# Reinstalls only when requirements.lock / requirements-nodeps.txt / pyproject.toml change
# (make compares their mtimes with .venv/.installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# pip's exit status survives the filter (pipefail); the filter drops noise about
# extra index folders that do not exist on every machine.
pip_q() { .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip_q install -U "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"
# The lock is complete, so no resolution is needed (--no-deps keeps pip from pulling a
# CUDA torch on a CPU machine). On a GPU machine TORCH_SPEC installs torch with its CUDA
# dependencies first, e.g. (docs/configuration.md, "GPU install"):
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
if [ -n "${TORCH_SPEC:-}" ]; then
    grep -v '^torch==' requirements.lock > .venv/requirements.nogpu.txt
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
    pip_q install ${TORCH_SPEC}
    pip_q install --no-deps -r .venv/requirements.nogpu.txt
else
    pip_q install --no-deps -r requirements.lock
fi
pip_q install --no-deps -r requirements-nodeps.txt
pip_q install --no-deps --no-build-isolation -e .
.venv/bin/python -m mobilemoe.setup_hooks
# The top-k INT4 MoE kernel (C++, against the executorch wheel; needs g++ or $CXX).
.venv/bin/python -m mobilemoe_kernels.build
# Fail loudly if the environment is incomplete.
.venv/bin/python -c "import torch, executorch, torchao, metaflow, mlflow, dvc, lm_eval, mobilemoe, mobilemoe_kernels; mobilemoe_kernels.load()" 
test -x .venv/bin/mobilemoe && test -x .venv/bin/dvc && test -x .venv/bin/lm_eval
touch .venv/.installed
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
