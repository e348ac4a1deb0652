"""The quantize stage's choice lists and defaults, torch-free so the CLI can build its options (and
``--help`` can start) without importing torch; ``resnet_deploy.quantize`` uses the same ones."""

TARGETS = ("tensorrt", "cpu")
METHODS = ("minmax", "ema", "percentile", "entropy", "mse")
DEFAULT_METHOD = "entropy"  # the best agreement with FP32 on both schemes in the calibration sweep
DEFAULT_PERCENTILE = 99.99
