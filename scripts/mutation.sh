#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that guard safety and correctness: fileio, checkpoint
# validation, the Q/DQ rules, the archive reader, the engine sidecar check, the parity gates.
# Which files are mutated and which tests must kill the mutants: scripts/mutation.cfg.
#
#   bash scripts/mutation.sh                 # every group (hours on 2 cores: run on a free machine)
#   bash scripts/mutation.sh sidecar fileio  # some groups
#   bash scripts/mutation.sh --list          # the groups, their modules and tests
#   bash scripts/mutation.sh --table         # the recorded scores as docs/reliability.md's Markdown table
#   bash scripts/mutation.sh --sample 80     # a seeded random sample of 80 mutants per group
#   bash scripts/mutation.sh --sample 80 --rerun timeout,survived  # test again those of the sample
#
# --sample N tests N mutants drawn at random (seed 0) from each group's mutants instead of all of them
# (mutmut starts a fresh pytest run, fixtures included, for every mutant: the int8 export tests cost
# tens of seconds each). mutmut counts a mutant whose tests overrun 15x their clean time as killed
# ("timeout"); on a loaded machine that can be load, not the mutant: --rerun timeout tests those of
# the sample again (on a quiet machine) and keeps the rest of its results; --rerun survived tests the
# survivors again after new tests were written for them ("no tests" and "not checked": mutants no listed
# test reached, or of functions changed since, mutmut resets those). The score of a sample estimates the group's score; its JSON records the sample
# size, the number of mutants it was drawn from and the Wilson 95% interval of the score.
#
# Each group runs in its own copy of the working tree (.mutation/<group>/, git-ignored), with a
# [mutmut] section added to that copy's setup.cfg, so the repository itself is never mutated and the
# groups' mutmut state stays apart (a rerun continues where it stopped). The score of each group,
# (killed + timeout) / (mutants - skipped) as mutmut's own badge computes it, is written to
# benchmarks/results/mutation/<group>.json with the surviving mutants in <group>-survivors.txt
# (`cd .mutation/<group> && ../../.venv/bin/python -m mutmut show NAME` prints one's diff), and a
# summary table is printed. docs/reliability.md quotes these files.
#
# Needs mutmut (.venv/bin/pip install mutmut; 3.x). A group whose tests read the shared CIFAR-10
# archive finds it through RESNET_DEPLOY_TEST_CIFAR10 (default ../shared/datasets/cifar10-jpeg.tar.xz).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
if ! "$PY" -c "import mutmut" 2>/dev/null; then
  echo "mutmut is not installed for $PY: $ROOT/.venv/bin/pip install mutmut" >&2
  exit 2
fi
exec "$PY" - "$ROOT" "$@" <<'PYTHON'
import configparser
import fnmatch
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

root = Path(sys.argv[1])
args = sys.argv[2:]
sample_size = None
rerun_statuses = set()
if "--rerun" in args:
    at = args.index("--rerun")
    rerun_statuses = set(args[at + 1].split(",")) if at + 1 < len(args) else set()
    if not rerun_statuses <= {"timeout", "survived", "no tests", "suspicious", "not checked"}:
        sys.exit("--rerun takes a comma-separated list of: timeout, survived, no tests, suspicious, not checked")
    del args[at:at + 2]
if "--sample" in args:
    at = args.index("--sample")
    try:
        sample_size = int(args[at + 1])
    except (IndexError, ValueError):
        sys.exit("--sample needs a number of mutants per group")
    del args[at:at + 2]
config = configparser.ConfigParser(interpolation=None)
config.read(root / "scripts" / "mutation.cfg")
groups = {name.split(":", 1)[1]: config[name] for name in config.sections() if name.startswith("group:")}


def lines(section, key):
    return [line.strip() for line in section.get(key, "").splitlines() if line.strip()]


if args == ["--list"]:
    for name, section in groups.items():
        print(f"{name}:\n  modules: {' '.join(lines(section, 'modules'))}\n  tests:   {' '.join(lines(section, 'tests'))}")
        if lines(section, "mutants"):
            print(f"  mutants: {' '.join(lines(section, 'mutants'))}")
    sys.exit(0)
if args == ["--table"]:
    print("| group | mutants tested (of) | killed | timeout | survived | no tests | score (95% interval) | timeouts as survivors | commit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in groups:
        path = root / "benchmarks" / "results" / "mutation" / f"{name}.json"
        if not path.is_file():
            print(f"| `{name}` | not run | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        c, low_high = r["by_status"], r.get("score_wilson95_percent") or ["-", "-"]
        print(f"| `{name}` | {r['mutants']} ({r.get('sampled_from') or r['mutants']}) | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
              f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {r['score_percent']}% ({low_high[0]}-{low_high[1]}) | "
              f"{r.get('score_timeouts_as_survivors_percent', '-')}% | {r['git_commit'][:7]} |")
    sys.exit(0)
unknown = [a for a in args if a not in groups]
if unknown:
    sys.exit(f"unknown group(s) {unknown}; groups: {', '.join(groups)}")
chosen = args or list(groups)

tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True, capture_output=True).stdout
files = [f for f in tracked.decode().split("\0") if f and not f.startswith(("training/", "mutants/", ".mutation/")) and (root / f).is_file()]
cifar = Path(os.environ.get("RESNET_DEPLOY_TEST_CIFAR10", root.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz")).resolve()
results_dir = root / "benchmarks" / "results" / "mutation"
results_dir.mkdir(parents=True, exist_ok=True)
summary = []


def mutant_statuses(work, env):
    listed = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                            capture_output=True, text=True, check=True).stdout
    pairs = (line.strip().rpartition(": ") for line in listed.splitlines())
    return {key: status for key, _, status in pairs if key}


def wilson(successes, n, z=1.96):
    # The score's 95% interval when the mutants tested are a sample of the group's.
    centre = (successes + z * z / 2) / (n + z * z)
    half = z * math.sqrt(successes * (n - successes) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


for name in chosen:
    section = groups[name]
    work = root / ".mutation" / name
    work.mkdir(parents=True, exist_ok=True)
    for stale in (work / "resnet_deploy", work / "tests"):  # the copy follows the working tree
        shutil.rmtree(stale, ignore_errors=True)
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, work / f)

    setup = (root / "setup.cfg").read_text()
    modules, tests, patterns = lines(section, "modules"), lines(section, "tests"), lines(section, "mutants")
    pytest_args = ["-p", "no:cacheprovider", *shlex.split(section.get("pytest_args", ""))]
    block = "\n    ".join
    setup += (
        "\n[mutmut]\n"
        "source_paths = resnet_deploy/\n"
        f"only_mutate =\n    {block(modules)}\n"
        f"pytest_add_cli_args_test_selection =\n    {block(tests)}\n"
        f"pytest_add_cli_args =\n    {block(pytest_args)}\n"
        "also_copy =\n    benchmarks/results/cpu-2026-12-01/pipeline-r20\n    README.md\n"
        "process_isolation = forkserver\n"  # torch is not fork-safe once initialised
        "use_git_change_detection = false\n"  # the copy has no .git of its own (the repository's would be found)
    )
    (work / "setup.cfg").write_text(setup)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RESNET_DEPLOY_QUIET": "1",
           "RESNET_DEPLOY_TEST_CIFAR10": str(cifar), "RESNET_DEPLOY_CACHE": str(work / ".cache")}
    print(f"== {name}: mutating {' '.join(modules)}" + (f" ({len(patterns)} function patterns)" if patterns else ""), flush=True)
    started = time.time()
    population = None
    if sample_size is None:
        subprocess.run([sys.executable, "-m", "mutmut", "run", *patterns], cwd=work, env=env, check=False)
    else:
        # Generate the mutants (and mutmut's test map) without testing any: a filter that matches no
        # mutant makes `mutmut run` stop right after generation, with an assertion we expect.
        subprocess.run([sys.executable, "-m", "mutmut", "run", "resnet_deploy.no_such_mutant"], cwd=work, env=env,
                       check=False, capture_output=True)
        names = sorted(key for meta in (work / "mutants").rglob("*.py.meta")
                       for key in json.loads(meta.read_text())["exit_code_by_key"]
                       if not patterns or any(fnmatch.fnmatch(key, p) for p in patterns))
        population = len(names)
        chosen_names = sorted(random.Random(0).sample(names, min(sample_size, population)))
        print(f"   sample: {len(chosen_names)} of {population} mutants (seed 0)", flush=True)
        to_run = chosen_names
        if rerun_statuses:
            to_run = [key for key, status in mutant_statuses(work, env).items() if key in set(chosen_names) and status in rerun_statuses]
            print(f"   testing again {len(to_run)} mutants of the sample ({', '.join(sorted(rerun_statuses))})", flush=True)
        if to_run:
            subprocess.run([sys.executable, "-m", "mutmut", "run", *to_run], cwd=work, env=env, check=False)
        patterns_for_results = set(chosen_names)
    statuses = {}
    for key, status in mutant_statuses(work, env).items():
        if population is not None:
            if key in patterns_for_results:
                statuses[key] = status
        elif key and (not patterns or any(fnmatch.fnmatch(key, p) for p in patterns)):
            statuses[key] = status
    counts = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    tested = len(statuses) - counts.get("skipped", 0) - counts.get("not checked", 0)
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    score = killed / tested * 100 if tested else None
    record = {
        "group": name, "modules": modules, "mutant_patterns": patterns, "tests": tests,
        "mutants": len(statuses), "by_status": dict(sorted(counts.items())), "score_percent": None if score is None else round(score, 1),
        "score_definition": "(killed + timeout) / (mutants - skipped - not checked)",
        "sampled_from": population, "sample_seed": None if population is None else 0,
        "score_timeouts_as_survivors_percent": None if not tested else round(counts.get("killed", 0) / tested * 100, 1),
        "score_wilson95_percent": None if not tested else [round(100 * b, 1) for b in wilson(killed, tested)],
        "minutes": round((time.time() - started) / 60, 1),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip(),
        "mutmut": subprocess.run([sys.executable, "-m", "mutmut", "--version"], cwd=work, capture_output=True, text=True).stdout.strip(),
    }
    (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    survivors = sorted(k for k, s in statuses.items() if s in ("survived", "no tests", "suspicious"))
    (results_dir / f"{name}-survivors.txt").write_text("".join(f"{statuses[k]:<10} {k}\n" for k in survivors))
    summary.append(record)

print(f"\n{'group':<11} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
for r in summary:
    c = r["by_status"]
    score = "-" if r["score_percent"] is None else f"{r['score_percent']:.1f}%"
    print(f"{r['group']:<11} {r['mutants']:>8} {c.get('killed', 0) + c.get('timeout', 0):>7} {c.get('survived', 0):>9} {c.get('no tests', 0):>9} {score:>7}")
print(f"\nrecorded in {results_dir.relative_to(root)}/")
PYTHON
