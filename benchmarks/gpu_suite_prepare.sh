#!/usr/bin/env bash
# Here, before a device call: fill .whl/ (the wheels the device lacks) and .carry/ (the shared
# CIFAR-10 archive), check that everything that travels fits the 64 MiB a call may carry, and print
# the exact device `run` call. Both folders are in .gitignore.
#
#   TORCHAO_VERSION  default 0.18.0 (its compiled parts are built for torch >= 2.11, the device's)
#   DATA             default ../shared/datasets/cifar10-jpeg.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
TORCHAO_VERSION=${TORCHAO_VERSION:-0.18.0}
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.xz}
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT=$((64 << 20))
mkdir -p .whl .carry

if ! ls .whl/torchao-"$TORCHAO_VERSION"-*.whl >/dev/null 2>&1; then
  rm -f .whl/torchao-*.whl  # one version only: two stop the whole install there
  # The device runs CPython 3.12 on x86-64 Linux; these tags are the ones its pip accepts.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "torchao==$TORCHAO_VERSION"
fi
# torchao declares no torch requirement; its __init__ says which torch its compiled parts need.
"$PYTHON" - .whl/torchao-"$TORCHAO_VERSION"-*.whl <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    init = wheel.read("torchao/__init__.py").decode()
    requires = [l for l in wheel.read(next(n for n in wheel.namelist() if n.endswith("METADATA"))).decode().splitlines()
                if l.startswith("Requires-Dist") and "extra ==" not in l]
minimum = re.search(r'min_torch_version = _parse_version\("([^"]+)"\)', init)
print(f"torchao wheel: needs torch >= {minimum.group(1) if minimum else 'unknown'}; runtime requirements: {requires or 'none'}")
PY

cp -f "$DATA" .carry/
[ -f "$DATA.sha256" ] && cp -f "$DATA.sha256" .carry/
(cd .carry && sha256sum -c ./*.sha256 >/dev/null) && echo "dataset checksum: ok"

carried=$(du -cb .whl .carry | tail -1 | cut -f1)
tree=$(git ls-files --cached --others --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
printf 'wheels %s, dataset %s, working tree %s: %s of %s bytes\n' \
  "$(du -sb .whl | cut -f1)" "$(du -sb .carry | cut -f1)" "$tree" "$total" "$LIMIT"
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: over the 64 MiB a call carries; the largest untracked files that would travel:" >&2
  git ls-files --others --exclude-standard -z | du -b --files0-from=- | sort -rn | head >&2
  exit 1
fi
cat <<'CALL'
The device call (one run; the suite stops itself at 510 s, timeout at 540 s):
  run(command="bash benchmarks/gpu_suite.sh", carry=[".whl", ".carry"], timeout_s=600)
Then, here: python benchmarks/gpu_results.py <files_at>   (results folder + README's GPU table)
CALL
