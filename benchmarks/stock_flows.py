"""ONNX Runtime's own int8 flow, run the way its documentation runs it, for the benchmarks that
compare resnet-deploy against it (``quantize_accuracy.py`` on accuracy, ``cpu_latency.py`` on speed)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from resnet_deploy.data import Normalization, normalize, to_tensor_images  # noqa: E402


def onnxruntime_quantize_static(
    pre_processed: Path, out: Path, images: np.ndarray, normalization: Normalization, *, per_channel: bool, symmetric: bool = False
) -> Path:
    """``quantize_static`` on an FP32 ONNX already through ``quant_pre_process``: QDQ format, int8
    weights (per-tensor or per-channel), MinMax calibration on ``images`` in batches of 100; uint8
    activations (its default) or, with ``symmetric``, symmetric int8 activations, the scheme
    TensorRT's explicit quantization needs."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(pre_processed)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                normalize(to_tensor_images(images[start : start + 100]), normalization).numpy() for start in range(0, len(images), 100)
            )

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    quantize_static(
        str(pre_processed), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else None,
    )
    return out
