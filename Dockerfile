# musiclit on a CUDA GPU: the same pinned set as `make install`, on an official PyTorch CUDA image.
#
#   docker build -t musiclit .
#   docker run --gpus all -v /workspace:/workspace musiclit fit --config configs/base.yaml \
#       --config configs/musicgen-medium-lora.yaml --config configs/cloud/a100-80gb.yaml --ckpt_path auto
#
# Why this base: its torch is the CUDA build of the version requirements.txt pins (torch==2.13.0). pip
# ignores the local label of an installed "2.13.0+cu128" when the pin has none (PEP 440), so the pin is
# already satisfied and pip keeps the image's CUDA torch. If BASE_IMAGE is changed to another torch
# version, pip replaces it with PyPI's torch 2.13.0, which on Linux x86_64 is itself a CUDA build; the
# check after the install fails the build if a CPU-only torch ever ends up in the image.
# The tag below is of the form the PyTorch project publishes; check it exists before building (docs/cloud.md).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# tini as PID 1: it forwards SIGTERM (what RunPod and Lambda send before stopping a machine) to musiclit,
# which checkpoints and exits; a bare python as PID 1 would not get the default signal handling.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUSICLIT_DATA=/workspace/data \
    MUSICLIT_RUNS=/workspace/runs \
    HF_HOME=/workspace/hf-cache

WORKDIR /opt/musiclit

# Dependencies first (a layer that only changes with requirements.txt / pyproject.toml), then the code.
COPY requirements.txt pyproject.toml README.md LICENSE ./
COPY musiclit ./musiclit
# The same install as the Makefile (tests/test_docker.py checks that the two lists are identical).
RUN python -m pip install -r requirements.txt ".[prep,wandb,dev]" \
    && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch in the image is a CPU build')"

COPY configs ./configs
COPY tools ./tools
COPY tests ./tests
COPY docker/entrypoint.sh /usr/local/bin/musiclit-entrypoint

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/musiclit-entrypoint"]
CMD ["--help"]
