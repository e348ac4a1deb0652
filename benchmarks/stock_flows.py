"""The runtimes' own int8 flows, each run the way its documentation runs it, for the benchmarks that
compare resnet-deploy against them: ONNX Runtime's ``quantize_static`` (``quantize_accuracy.py`` on
accuracy, ``cpu_latency.py`` and ``cpu_int8_backends.py`` on speed) and OpenVINO's NNCF
(``cpu_int8_backends.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from resnet_deploy.data import Normalization, normalized_batches  # noqa: E402


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
            self.batches = (batch.numpy() for batch in normalized_batches(images, normalization, 100))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    quantize_static(
        str(pre_processed), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else None,
    )
    return out


# NNCF's post-training quantization as its documentation runs it for a ReLU CNN on a CPU: the PERFORMANCE
# preset (symmetric activations; MIXED, asymmetric activations, is for non-ReLU activations), CPU
# target device, fast bias correction (its default), one calibration image per dataset item.
NNCF_SETTINGS = {"preset": "performance", "target_device": "CPU", "fast_bias_correction": True}


def nncf_quantize_openvino(fp32_onnx: Path, out: Path, images: np.ndarray, normalization: Normalization, *, preset: str = "performance") -> Path:
    """OpenVINO's own int8 flow: the FP32 ONNX read by OpenVINO, ``nncf.quantize`` (OpenVINO backend)
    over ``images`` (all of them: ``subset_size`` is their count), saved as OpenVINO IR ``out``
    (``.xml`` + ``.bin``, FP32 weights kept: ``compress_to_fp16=False``)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    samples = [batch.numpy() for batch in normalized_batches(images, normalization, 1)]
    quantized = nncf.quantize(
        model, nncf.Dataset(samples), preset=nncf.QuantizationPreset(preset), target_device=nncf.TargetDevice.CPU,
        subset_size=len(samples), fast_bias_correction=NNCF_SETTINGS["fast_bias_correction"],
    )
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out
