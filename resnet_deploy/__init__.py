"""resnet-deploy: from a CIFAR ResNet's training to a verified int8 deployment."""

__version__ = "0.1.0"
