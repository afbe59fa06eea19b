#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: python3 + pip are all it needs.
# torch is installed first and pinned to the CPU build that lies on this machine's disk, so that
# no dependency can pull a multi-GB CUDA build; on a GPU machine set STAGE1_TORCH to override.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${STAGE1_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]'
mkdir -p data/dagster_home
cp dagster.yaml data/dagster_home/dagster.yaml
echo "stage1 set-up done: $(.venv/bin/python -c 'import torch, transformers, dagster; print("torch", torch.__version__, "transformers", transformers.__version__, "dagster", dagster.__version__)')"
