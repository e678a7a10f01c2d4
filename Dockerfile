# The image of remote steps (docs/scale-out.md#the-container-image): the pinned environment
# with the CUDA build of torch, and the MoE kernel library built against its executorch.
# The code itself comes with each run (Metaflow's code package); the copy here only builds
# the environment, so an image serves every commit with the same requirements.lock.
#
#   docker build -t REGISTRY/mobilemoe:$(git rev-parse --short HEAD) .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        software-properties-common g++ git ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mobilemoe
COPY requirements.lock requirements-nodeps.txt pyproject.toml Makefile ./
COPY scripts/ scripts/
COPY mobilemoe/ mobilemoe/
COPY mobilemoe_kernels/ mobilemoe_kernels/
COPY device_lab/ device_lab/
RUN make setup PYTHON=python3.11 TORCH_SPEC="$TORCH_SPEC" \
    && .venv/bin/python -c "import torch; assert torch.version.cuda, 'not a CUDA build'"

# Metaflow runs `python full_repro.py step ...` in the extracted code package: this
# interpreter, this kernel library; the package's own library sources come first on the path.
ENV PATH=/opt/mobilemoe/.venv/bin:$PATH \
    MOBILEMOE_PYTHON=/opt/mobilemoe/.venv/bin/python \
    MOBILEMOE_KERNELS_LIBRARY=/opt/mobilemoe/mobilemoe_kernels/lib/libmobilemoe_kernels.so \
    USERNAME=mobilemoe \
    MLFLOW_DISABLE_TELEMETRY=true \
    OMP_NUM_THREADS=8
