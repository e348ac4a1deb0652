"""The quantize stage's choice lists and defaults, torch-free so the CLI can build its options (and
``--help`` can start) without importing torch; ``resnet_deploy.quantize`` uses the same ones."""

TARGETS = ("tensorrt", "cpu")
METHODS = ("minmax", "ema", "percentile", "entropy", "mse")
DEFAULT_METHOD = "entropy"  # the best agreement with FP32 on both schemes in the calibration sweep
DEFAULT_PERCENTILE = 99.99
# How a residual Add reads its convolution-side input (the block's last conv, BN folded): "int8"
# re-quantizes it before the Add (both Add inputs int8); "float" leaves it unquantized (only the
# shortcut input is quantized, the ReLU after the Add still quantizes the sum). See
# quantize.quantizer.annotate_graph for why a deployment would pick either.
RESIDUAL_CONV_INPUTS = ("int8", "float")
DEFAULT_RESIDUAL_CONV_INPUT = "int8"
