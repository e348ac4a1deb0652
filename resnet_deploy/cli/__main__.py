"""``python -m resnet_deploy.cli`` (what torchrun launches) runs the same CLI as ``resnet-deploy``."""

from . import main

if __name__ == "__main__":
    main(prog_name="resnet-deploy")
