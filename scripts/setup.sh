#!/usr/bin/env bash
# Create .venv with resnet-deploy and everything its tests and benchmarks use.
#
#   bash scripts/setup.sh            # CPU/GPU PyTorch 2.14 + torchvision 0.29, torchao 0.18, ONNX tools,
#                                    # ONNX Runtime (CPU build, extra cpu), matplotlib (extra plots),
#                                    # TensorRT-RTX (builds engines even without a GPU), OpenVINO, test tools
#   PYTHON=python3.12 bash scripts/setup.sh
#
# Full NVIDIA TensorRT, if you have it (pip install tensorrt from NVIDIA's index), is preferred over
# TensorRT-RTX automatically. Re-running is cheap: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision are pinned as a pair: torchvision's wheels only run with their own torch.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# ONNX Runtime's CPU build ([cpu]); on a CUDA machine [gpu] (onnxruntime-gpu) instead, never both.
.venv/bin/python -m pip install -q -e ".[cpu,plots,dev,simplify,tensorrt,openvino]"
.venv/bin/python -c "import torch, torchvision, torchao, onnx, onnxruntime, openvino; print('resnet-deploy environment ready: torch', torch.__version__, '| torchao', torchao.__version__, '| onnxruntime', onnxruntime.__version__, '| openvino', openvino.get_version())"
