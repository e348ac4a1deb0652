"""The ``resnet-deploy`` command: a thin click layer over the library functions.

Each stage's commands live in their own module here and call plain functions of the stage's library
module. Errors a user can fix (``UserError``) print one line and exit 2; failed verification exits 1;
nothing a user does should show a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys

import click

from . import logs
from ..errors import UserError, VerificationError


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a stage's own graceful-stop block (see ``signals.StopRequest``)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


class ResnetDeployGroup(click.Group):
    """Turns library errors into clean messages and exit codes.

    SIGTERM (what kill, Slurm, Kubernetes send) is turned into a clean exit 143 wherever a stage has no
    graceful stop of its own (calibration, export, evaluation): every file is written atomically, so
    what is on disk is the previous version or the new one, and a rerun redoes the step.
    """

    def main(self, *args, **kwargs):
        logs.install_handler()  # before the command line is parsed: -q/-v then set the level
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread (an embedding application): leave signals alone
            previous = None
        try:
            return super().invoke(ctx)
        except _Terminated:
            click.echo("error: interrupted by SIGTERM; files already written are complete (atomic writes), "
                       "the step in progress was not saved: run the command again", err=True)
            sys.exit(128 + signal.SIGTERM)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except VerificationError as exc:
            click.echo(f"verification failed: {exc}", err=True)
            sys.exit(VerificationError.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


_VERBOSITY_KEY = "resnet_deploy.verbosity"


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-q/-v, wherever on the command line they stand (before or after the command name)."""
    if not value or ctx.resilient_parsing:
        return
    given = ctx.find_root().meta.setdefault(_VERBOSITY_KEY, set())
    given.add(param.name)
    if given == {"quiet", "verbose"}:
        raise click.UsageError("-q/--quiet and -v/--verbose contradict each other: give one of them", ctx=ctx)
    if param.name == "quiet":
        logs.quiet()
    else:
        logs.verbose()


def verbosity_options() -> list[click.Option]:
    """-q and -v as options of the group and of every command, so ``resnet-deploy models -q`` works too."""
    return [
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=_set_verbosity,
                     help="No progress bars or status lines (results still print). [env RESNET_DEPLOY_QUIET=1]"),
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=_set_verbosity,
                     help="Progress bars and status lines even where RESNET_DEPLOY_QUIET=1 is set, and the log "
                     "messages (INFO and up) of the libraries underneath."),
    ]


@click.group(cls=ResnetDeployGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="resnet-deploy")
def main() -> None:
    """Train CIFAR ResNets, quantize them to int8, export to ONNX / TensorRT and prove the int8 model
    is as accurate as FP32 and how much faster it is.

    \b
    Typical flow (export RESNET_DEPLOY_DATA=DATA once and every --data-dir DATA can go):
      resnet-deploy train --model resnet20 --data-dir DATA --output runs/r20
      resnet-deploy quantize runs/r20/best.pt --data-dir DATA
      resnet-deploy export runs/r20/best.pt --int8 calibration/r20-tensorrt --data-dir DATA
      resnet-deploy bench --backend onnxruntime --export exports/r20 --data-dir DATA
    or all of it at once, on the shipped ResNet20: resnet-deploy pipeline --data-dir DATA --name r20
    Every CHECKPOINT may be pretrained:NAME, a model shipped with the package (resnet-deploy models).
    -q and -v may come before or after the command name.
    """


main.params.extend(verbosity_options())


# torchao 0.18 registers an Enum with torch's pytree at import, and torch >= 2.12 logs a deprecation
# warning about it on every command that quantizes; it is torchao's to fix, and says nothing to a user.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def _register() -> None:
    from . import bench_commands, export_commands, import_commands, inspect_commands, pipeline_commands, quantize_commands, train_commands

    for module in (train_commands, import_commands, quantize_commands, export_commands, inspect_commands, bench_commands,
                   pipeline_commands):
        for command in module.COMMANDS:
            command.params.extend(verbosity_options())
            main.add_command(command)


_register()
