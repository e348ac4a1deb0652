"""The Q/DQ rules (export/qdq.py) on small synthetic ONNX graphs, one rule at a time: each breach is
refused with its message, the graphs each scheme wants pass; the int32 Gemm-bias rewrite; what ONNX
Runtime fuses. Fast (no model, no export): the qdq mutation group's tests (scripts/mutation.cfg)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_deploy.export.qdq import analyse_qdq, int32_linear_biases, ort_int8_kernels, ort_optimized_model, qdq_problems, qdq_problems_of

OUT_CHANNELS, IN_CHANNELS = 8, 4


def _conv_graph(*, act_dtype=np.int8, act_zero=0, act_zero_input=True, weight_dtype=np.int8, weight_zero=0, per_channel=True,
                axis=0, quantized_weight=True, bias_offset=0.0, bias=True, scale_as_constant=False, int32_bias=False,
                output_qdq=False) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv(DQ(weight), float bias on the int32 grid, moved off it by ``bias_offset``
    accumulator units) -> output: one quantized convolution as the exporter writes it, with one knob per rule."""
    rng = np.random.default_rng(0)
    x_scale = np.float32(0.05)
    w_scale = rng.uniform(0.001, 0.01, OUT_CHANNELS).astype(np.float32) if per_channel else np.float32(0.005)
    step = np.float64(x_scale) * np.broadcast_to(w_scale, OUT_CHANNELS).astype(np.float64)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (OUT_CHANNELS, IN_CHANNELS, 3, 3)).astype(weight_dtype), "w"),
             numpy_helper.from_array(np.asarray(w_scale), "w_scale"),
             numpy_helper.from_array(np.full(np.shape(w_scale), weight_zero, weight_dtype), "w_zero")]
    nodes = []
    if scale_as_constant:
        nodes.append(helper.make_node("Constant", [], ["x_scale"], value=numpy_helper.from_array(np.array(x_scale), "x_scale")))
    else:
        inits.append(numpy_helper.from_array(np.array(x_scale), "x_scale"))
    inits.append(numpy_helper.from_array(np.array(act_zero, act_dtype), "x_zero"))
    qdq_inputs = ["x_scale", "x_zero"] if act_zero_input else ["x_scale"]
    nodes += [helper.make_node("QuantizeLinear", ["input", *qdq_inputs], ["x_q"]),
              helper.make_node("DequantizeLinear", ["x_q", *qdq_inputs], ["x_dq"])]
    weight = "w"
    if quantized_weight:
        nodes.append(helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"], axis=axis))
        weight = "w_dq"
    else:
        inits[0] = numpy_helper.from_array(rng.normal(0, 0.1, (OUT_CHANNELS, IN_CHANNELS, 3, 3)).astype(np.float32), "w")
    conv_inputs = ["x_dq", weight]
    if bias:
        units = rng.integers(-2000, 2000, OUT_CHANNELS) + bias_offset
        inits.append(numpy_helper.from_array((units * step).astype(np.float32), "bias"))
        conv_inputs.append("bias")
    conv_out = "y" if output_qdq else "output"
    nodes.append(helper.make_node("Conv", conv_inputs, [conv_out], pads=[1, 1, 1, 1], name="conv"))
    if output_qdq:
        inits += [numpy_helper.from_array(np.float32(0.1), "y_scale"), numpy_helper.from_array(np.array(act_zero, act_dtype), "y_zero")]
        nodes += [helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["output"])]
    if int32_bias:
        inits += [numpy_helper.from_array(np.zeros(OUT_CHANNELS, np.int32), "bias_q"), numpy_helper.from_array(np.ones(OUT_CHANNELS, np.float32), "bias_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias_f"], axis=0))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", IN_CHANNELS, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _problems(scheme: str, **knobs) -> list[str]:
    return qdq_problems_of(analyse_qdq(_conv_graph(**knobs)), scheme)


def test_analysis_of_a_tensorrt_form_convolution():
    assert analyse_qdq(_conv_graph()) == {
        "quantize_linear": 1,
        "dequantize_linear": 2,
        "activation_qdq_by_dtype": {"DequantizeLinear:int8": 1, "QuantizeLinear:int8": 1},
        "activation_nonzero_zero_points": 0,
        "weights": {"per_channel_axis0": 1, "per_channel_other_axis": 0, "per_tensor": 0, "nonzero_zero_point": 0, "not_int8": 0},
        "int32_bias_dequantize": 0,
        "convolutions": 1,
        "quantized_convolutions": 1,
        "quantized_convolutions_float_output": 1,  # its output is the graph's, no QuantizeLinear reads it
        "conv_bias_off_int32_grid": 0,
    }


def test_a_convolution_whose_output_is_quantized_is_not_counted_as_float_output():
    """--residual-conv-input float leaves convs with a float output (ONNX Runtime cannot fuse those into
    QLinearConv); one whose output a QuantizeLinear reads is not one of them."""
    analysis = analyse_qdq(_conv_graph(output_qdq=True))
    assert analysis["quantized_convolutions"] == 1
    assert analysis["quantized_convolutions_float_output"] == 0
    assert analyse_qdq(_conv_graph())["quantized_convolutions_float_output"] == 1


def test_scales_from_constant_nodes_and_default_zero_points_are_read():
    analysis = analyse_qdq(_conv_graph(scale_as_constant=True, bias_offset=0.3))
    assert analysis["conv_bias_off_int32_grid"] == 1  # the bias check found the scale in the Constant node
    assert analyse_qdq(_conv_graph(act_zero_input=False))["activation_qdq_by_dtype"] == {
        "DequantizeLinear:uint8 (default)": 1, "QuantizeLinear:uint8 (default)": 1}


def test_graphs_each_scheme_wants_pass():
    assert _problems("tensorrt") == []
    assert _problems("cpu", act_dtype=np.uint8, act_zero=128) == []


@pytest.mark.parametrize("scheme", ["tensorrt", "cpu"])
@pytest.mark.parametrize(
    "knobs, problem",
    [
        (dict(quantized_weight=False), "no convolution has DequantizeLinear on both its input and its weight"),
        (dict(per_channel=False), "1 weight(s) not quantized per channel on axis 0"),
        (dict(axis=1), "1 weight(s) not quantized per channel on axis 0"),
        (dict(weight_dtype=np.uint8), "1 weight(s) not stored as int8"),
        (dict(weight_zero=1), "1 weight(s) with non-zero zero-points (weights must be symmetric)"),
    ],
)
def test_weight_rules_hold_for_both_schemes(scheme, knobs, problem):
    activations = {} if scheme == "tensorrt" else dict(act_dtype=np.uint8, act_zero=128)
    assert _problems(scheme, **activations, **knobs) == [problem]


def test_tensorrt_rules_refuse_what_its_parser_rejects_and_cpu_allows_it():
    uint8 = dict(act_dtype=np.uint8, act_zero=128)
    assert _problems("tensorrt", **uint8) == [
        "TensorRT needs int8 activations, found {'DequantizeLinear:uint8': 1, 'QuantizeLinear:uint8': 1}",
        "2 activation Q/DQ with non-zero zero-points (TensorRT rejects them)",
    ]
    assert _problems("tensorrt", act_zero=3) == ["2 activation Q/DQ with non-zero zero-points (TensorRT rejects them)"]
    assert _problems("tensorrt", int32_bias=True) == ["1 int32 bias DequantizeLinear (TensorRT rejects them)"]
    assert _problems("cpu", **uint8, int32_bias=True) == []


def test_bias_off_the_int32_grid_is_counted():
    assert analyse_qdq(_conv_graph(bias_offset=0.3))["conv_bias_off_int32_grid"] == 1
    assert analyse_qdq(_conv_graph(bias_offset=0.0005))["conv_bias_off_int32_grid"] == 0  # float32 noise, not off the grid
    assert analyse_qdq(_conv_graph(per_channel=False, bias_offset=0.3))["conv_bias_off_int32_grid"] == 1
    assert analyse_qdq(_conv_graph(bias=False))["conv_bias_off_int32_grid"] == 0


def test_qdq_problems_reads_the_file(tmp_path):
    onnx.save(_conv_graph(act_zero=3), str(tmp_path / "m.onnx"))
    assert qdq_problems(tmp_path / "m.onnx", "tensorrt") == ["2 activation Q/DQ with non-zero zero-points (TensorRT rejects them)"]
    assert qdq_problems(tmp_path / "m.onnx", "cpu") == []


def test_onnx_runtime_fuses_the_cpu_form_into_qlinearconv(tmp_path):
    onnx.save(_conv_graph(act_dtype=np.uint8, act_zero=128, bias=False, output_qdq=True), str(tmp_path / "int8.onnx"))
    kernels = ort_int8_kernels(tmp_path / "int8.onnx")
    assert (kernels["qlinear_conv"], kernels["float_conv"], kernels["qgemm"], kernels["float_gemm"]) == (1, 0, 0, 0)
    assert kernels["onnxruntime"] == onnxruntime.__version__
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (OUT_CHANNELS, IN_CHANNELS, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])], "float",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", IN_CHANNELS, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "float.onnx"))
    kernels = ort_int8_kernels(tmp_path / "float.onnx")
    assert (kernels["qlinear_conv"], kernels["float_conv"]) == (0, 1)


# --------------------------------------------------------------------------------- int32 Gemm biases


def _quantized_fc(bias_offset: float = 0.0, **gemm_attributes):
    """Q/DQ input (uint8) and int8 per-channel weight -> Gemm with a float bias on the int32 grid
    (moved off it by ``bias_offset`` accumulator units): the classifier as the exporter writes it."""
    rng = np.random.default_rng(0)
    x_scale, w_scale = np.float32(0.05), rng.uniform(0.001, 0.01, 10).astype(np.float32)
    bias = ((rng.integers(-2000, 2000, 10) + bias_offset) * (np.float64(x_scale) * w_scale.astype(np.float64))).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.array(x_scale), "x_scale"), numpy_helper.from_array(np.array(3, np.uint8), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (10, 64)).astype(np.int8), "w"), numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(10, np.int8), "w_zero"), numpy_helper.from_array(bias, "fc.bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Gemm", ["x_dq", "w_dq", "fc.bias"], ["logits"], name="fc", **{"transB": 1, **gemm_attributes}),
    ]
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_int32_linear_bias_is_exact_and_fuses_into_qgemm(tmp_path):
    """The cpu-scheme rewrite of the classifier's bias: ONNX Runtime then fuses QGemm (float logits out),
    the logits are those of the float-bias graph to float rounding, and a bias off the grid is left alone."""
    x = np.random.default_rng(1).uniform(-0.1, 12, (64, 64)).astype(np.float32)
    model = _quantized_fc()
    before = _run(model, x)
    onnx.save(model, str(tmp_path / "before.onnx"))
    assert [n.op_type for n in ort_optimized_model(tmp_path / "before.onnx").graph.node].count("QGemm") == 0
    assert int32_linear_biases(model) == 1
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "after.onnx"))
    ops = [n.op_type for n in ort_optimized_model(tmp_path / "after.onnx").graph.node]
    assert ops.count("QGemm") == 1 and "Gemm" not in ops
    after = _run(model, x)
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max() and (after.argmax(1) == before.argmax(1)).all()
    assert "fc.bias" not in {i.name for i in model.graph.initializer}
    assert analyse_qdq(model)["int32_bias_dequantize"] == 1
    assert int32_linear_biases(_quantized_fc(bias_offset=0.3)) == 0  # rounding it would change the model


@pytest.mark.parametrize("attributes", [dict(alpha=2.0), dict(beta=0.5), dict(transA=1)])
def test_int32_linear_bias_leaves_a_gemm_that_scales_or_transposes_alone(attributes):
    model = _quantized_fc(**attributes)
    assert int32_linear_biases(model) == 0
    assert "fc.bias" in {i.name for i in model.graph.initializer}


def test_int32_linear_bias_keeps_a_float_bias_still_used_elsewhere():
    model = _quantized_fc()
    model.graph.output.append(helper.make_tensor_value_info("fc.bias", TensorProto.FLOAT, [10]))
    assert int32_linear_biases(model) == 1
    assert "fc.bias" in {i.name for i in model.graph.initializer}
    model = _quantized_fc()
    model.graph.node.append(helper.make_node("Identity", ["fc.bias"], ["bias_copy"]))
    assert int32_linear_biases(model) == 1 and "fc.bias" in {i.name for i in model.graph.initializer}


def test_int32_linear_bias_needs_a_float32_constant_bias_and_dequantized_inputs():
    model = _quantized_fc()
    bias = next(i for i in model.graph.initializer if i.name == "fc.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).astype(np.float64), "fc.bias"))
    assert int32_linear_biases(model) == 0
    model = _quantized_fc()
    gemm = model.graph.node[-1]
    gemm.input[1] = "w_plain"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((10, 64), np.float32), "w_plain"))
    assert int32_linear_biases(model) == 0
