#!/usr/bin/env bash
# The GPU suite as one device call: install the carried wheels, check the carried dataset, run the
# suite under timeout, log everything into $OUT. Made ready by benchmarks/gpu_suite_prepare.sh, which
# prints the exact `run` call; see benchmarks/gpu_suite.py for the stages.
#
#   SUITE_TIMEOUT   seconds before timeout stops the suite (default 540; the suite's own deadline is
#                   30 s less, so it writes its report first)
#   SUITE_ARGS      extra arguments for gpu_suite.py (e.g. "--stages environment,train-resnet20")
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-suite-out}
mkdir -p "$OUT"
LOG="$OUT/suite.log"
TIMEOUT=${SUITE_TIMEOUT:-540}
PYTHON=${PYTHON:-python3}
DATA=.carry/cifar10-jpeg.tar.xz
{
  echo "== gpu_suite.sh $(date -u +%FT%TZ) on $(hostname)"
  # Wheels go to their own folder: the image's packages stay as they are, the carried ones come first.
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-suite-site .whl/*.whl || echo "warning: the carried wheels did not install; int8 rows will say why"
    export PYTHONPATH=/tmp/gpu-suite-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "warning: no carried wheels in .whl/ (run benchmarks/gpu_suite_prepare.sh here first)"
  fi
  # The library reads the archive member by member in memory (its safety checks included), so it
  # is not unpacked to disk: checking it is all the wrapper does.
  if [ -f "$DATA.sha256" ]; then
    (cd .carry && sha256sum -c "$(basename "$DATA").sha256") || { echo "error: $DATA is damaged"; exit 3; }
  fi
  [ -f "$DATA" ] || { echo "error: no dataset at $DATA (carry .carry, filled by gpu_suite_prepare.sh)"; exit 3; }
  export RESNET_DEPLOY_CACHE=/tmp/gpu-suite-cache PYTHONUNBUFFERED=1
  # -k: a suite that ignores SIGTERM is killed 20 s later; $OUT keeps what it wrote by then.
  # shellcheck disable=SC2086
  timeout -k 20 "$TIMEOUT" "$PYTHON" benchmarks/gpu_suite.py --data "$DATA" --out "$OUT" \
    --work /tmp/gpu-suite-work --deadline "$((TIMEOUT - 30))" ${SUITE_ARGS:-}
  echo "== gpu_suite.py exit $? $(date -u +%FT%TZ)"
} 2>&1 | tee "$LOG"
