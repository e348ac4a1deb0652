"""A deliberately broken build, to show the kill -9 test can fail: writes go straight to the target.

Put this folder on PYTHONPATH (an absolute path: the runs start in other folders) and the training
processes the kill test starts replace ``fileio.atomic_path`` with an in-place write (in 64 KiB
chunks, fsynced), which a kill can tear:

    PYTHONPATH=$PWD/tests/mutants/torn_writes RESNET_DEPLOY_KILLS=12 RESNET_DEPLOY_KILL_SEED=3 \
        pytest tests/test_reliability_faults.py -k kill_9     # expected: FAILED, "... is torn after a kill"

The QAT and export kill loops fail the same way with it:

    PYTHONPATH=$PWD/tests/mutants/torn_writes pytest tests/test_reliability_kill_stages.py -k "qat or export"
"""

import contextlib
import os
from pathlib import Path

import resnet_deploy.fileio as fileio


@contextlib.contextmanager
def torn_atomic_path(target):
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.mutant.tmp"  # the kill test waits for temporaries to appear
    yield tmp
    data = tmp.read_bytes()
    with open(target, "wb") as handle:
        for start in range(0, len(data), 1 << 16):
            handle.write(data[start : start + (1 << 16)])
            handle.flush()
            os.fsync(handle.fileno())
    tmp.unlink()


fileio.atomic_path = torn_atomic_path
