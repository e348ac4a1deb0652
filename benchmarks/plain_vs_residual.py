#!/usr/bin/env python
"""Plain vs residual nets (He et al. 2016, Fig. 6): per-epoch training and test error of plain20,
plain56, resnet20 and resnet56, the final figures, and a verdict computed from them.

It reads what training wrote (RUN/metrics.jsonl and RUN/config.json) or a checkpoint's ``history``
(``*.pt``, or ``pretrained:NAME`` for a shipped model), trains nothing. The verdict asks the paper's two questions:
* degradation: does plain56 end with a higher training error AND a higher test error than plain20?
* residual learning: does resnet56 end with a lower test error than resnet20?
A run that is missing or has fewer epochs than its config planned is reported as such, and the
questions that need it are left unanswered.

Training error is 100 - train_top1 as training logs it: the running accuracy over each epoch's
augmented batches (as in the paper's figure), under the recipe's label smoothing. The shared CIFAR-10
is a JPEG (q75) copy: absolute errors are not the paper's, the comparison between depths is the point.

    python benchmarks/plain_vs_residual.py
    python benchmarks/plain_vs_residual.py --runs training/plain20,training/plain56,pretrained:resnet20,training/resnet56
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resnet_deploy.fileio import atomic_write_text, write_json  # noqa: E402

DEFAULT_RUNS = ("training/plain20", "training/plain56", "training/resnet20", "training/resnet56")
PANELS = {"plain": ("plain20", "plain56"), "ResNet": ("resnet20", "resnet56")}  # the paper's left and right panels
RECIPE_IGNORED = ("model", "plain", "shortcut", "device", "epochs", "sync_bn")  # what may differ between the four
NOISE_SE = 2  # a test-error difference under this many standard errors is reported as within noise


@dataclass
class Run:
    """One training run as read from disk."""

    name: str
    source: str
    status: str  # "finished", "unfinished" or "missing"
    epochs_done: int = 0
    epochs_planned: int | None = None
    test_size: int | None = None
    recipe: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def progress(self) -> str:
        if self.status == "missing":
            return "-"
        return f"{self.epochs_done}/{self.epochs_planned if self.epochs_planned is not None else '?'} epochs"

    def errors(self, key: str) -> list[float]:
        """Per-epoch error in percent of ``train_top1`` or ``test_top1``."""
        return [100.0 - row[key] for row in self.history]

    def final(self) -> dict | None:
        if not self.history:
            return None
        return {
            "epoch": self.history[-1]["epoch"],
            "train_error": round(self.errors("train_top1")[-1], 2),
            "test_error": round(self.errors("test_top1")[-1], 2),
            "best_test_error": round(min(self.errors("test_top1")), 2),
        }


def run_name(model: dict) -> str:
    """'plain56' / 'resnet20' from a checkpoint's model spec."""
    return model["name"].replace("resnet", "plain") if model.get("plain") else model["name"]


def load_run(path: Path) -> Run:
    """A run directory (metrics.jsonl + config.json) or a checkpoint file with a history."""
    if path.suffix == ".pt":
        return _load_checkpoint_run(path)
    metrics, config_path = path / "metrics.jsonl", path / "config.json"
    if not metrics.is_file() or not config_path.is_file():
        return Run(name=path.name, source=str(path), status="missing")
    config = json.loads(config_path.read_text())
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return _run(run_name(config["model"]), str(path), config["train"], config.get("dataset", {}), history)


def _load_checkpoint_run(path: Path) -> Run:
    if not path.is_file():
        return Run(name=path.stem, source=str(path), status="missing")
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return _run(run_name(state["model"]), str(path), state.get("train_config", {}), state.get("dataset", {}), state.get("history", []))


def _run(name: str, source: str, train_config: dict, dataset: dict, history: list[dict]) -> Run:
    planned = train_config.get("epochs")
    done = history[-1]["epoch"] if history else 0
    status = "finished" if planned is not None and done >= planned else "unfinished"
    recipe = {k: v for k, v in train_config.items() if k not in RECIPE_IGNORED}
    return Run(name, source, status, done, planned, dataset.get("test_size"), recipe, history)


def load_runs(paths: list[Path]) -> dict[str, Run]:
    """Runs by name (plain20, resnet56, ...); two sources of one name are refused, not silently merged."""
    runs: dict[str, Run] = {}
    for run in map(load_run, paths):
        if run.name in runs:
            raise SystemExit(f"--runs: {runs[run.name].source} and {run.source} are both {run.name}")
        runs[run.name] = run
    return runs


def compare_depths(runs: dict[str, Run], shallow: str, deep: str) -> dict:
    """Final errors of ``deep`` against ``shallow``; ``comparable`` False (with why) unless both finished."""
    not_ready = [
        f"{name} {'missing' if name not in runs or runs[name].status == 'missing' else 'unfinished (' + runs[name].progress + ')'}"
        for name in (shallow, deep)
        if name not in runs or runs[name].status != "finished"
    ]
    if not_ready:
        return {"comparable": False, "reason": ", ".join(not_ready)}
    a, b = runs[shallow].final(), runs[deep].final()
    difference = b["test_error"] - a["test_error"]
    se = _difference_se(a["test_error"], b["test_error"], runs[shallow].test_size, runs[deep].test_size)
    return {
        "comparable": True,
        "train_error": {shallow: a["train_error"], deep: b["train_error"]},
        "test_error": {shallow: a["test_error"], deep: b["test_error"]},
        "deeper_train_error_higher": b["train_error"] > a["train_error"],
        "deeper_test_error_higher": b["test_error"] > a["test_error"],
        "test_difference_points": round(difference, 2),
        "test_difference_se_points": None if se is None else round(se, 2),
        "test_difference_within_noise": None if se is None else abs(difference) < NOISE_SE * se,
    }


def _difference_se(error_a: float, error_b: float, count_a: int | None, count_b: int | None) -> float | None:
    """Standard error (points) of the difference of two error rates on independent test sets of these sizes."""
    if not count_a or not count_b:
        return None
    pa, pb = error_a / 100, error_b / 100
    return 100 * math.sqrt(pa * (1 - pa) / count_a + pb * (1 - pb) / count_b)


def verdict(runs: dict[str, Run]) -> dict:
    """The paper's two questions answered from the data (None where a run needed is not finished)."""
    plain = compare_depths(runs, *PANELS["plain"])
    residual = compare_depths(runs, *PANELS["ResNet"])
    degradation = plain["deeper_train_error_higher"] and plain["deeper_test_error_higher"] if plain["comparable"] else None
    deeper_resnet_better = not residual["deeper_test_error_higher"] if residual["comparable"] else None
    reproduced = None if degradation is None or deeper_resnet_better is None else degradation and deeper_resnet_better
    present = [run.recipe for run in runs.values() if run.status != "missing"]
    differing = sorted({key for recipe in present for key in recipe if any(r.get(key) != recipe.get(key) for r in present)})
    return {
        "degradation": degradation,
        "plain": plain,
        "deeper_resnet_better": deeper_resnet_better,
        "residual": residual,
        "reproduces_paper": reproduced,
        "same_recipe": not differing,
        "recipe_differs_in": differing,
    }


def _answer(value: bool | None, comparison: dict) -> str:
    if value is None:
        return f"not answered: {comparison['reason']}"
    noise = comparison["test_difference_within_noise"]
    detail = (
        f"train error {_pair(comparison['train_error'])}, test error {_pair(comparison['test_error'])}"
        f" (test difference {comparison['test_difference_points']:+.2f} ± {comparison['test_difference_se_points']} points"
        f"{', within noise' if noise else ''})"
    )
    return f"{'yes' if value else 'no'}: {detail}"


def _pair(values: dict) -> str:
    return " vs ".join(f"{name} {value:.2f}%" for name, value in values.items())


def markdown(runs: dict[str, Run], result: dict, command: str) -> str:
    lines = [
        "# Plain vs residual (He et al. 2016, Fig. 6)",
        "",
        f"`{command}`. Error = 100 - top-1 (%), final epoch; training error is the running figure over each",
        "epoch's augmented batches. Shared CIFAR-10 is a JPEG q75 copy: compare depths, not absolute figures with the paper.",
        "",
        "| run | status | epochs | train error | test error | best test error | source |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for run in runs.values():
        final = run.final() or {}
        cells = [f"{final[k]:.2f}" if k in final else "-" for k in ("train_error", "test_error", "best_test_error")]
        lines.append(f"| {run.name} | {run.status} | {run.progress} | {' | '.join(cells)} | `{run.source}` |")
    reproduced = result["reproduces_paper"]
    lines += [
        "",
        f"- Degradation (plain56 higher training AND test error than plain20): {_answer(result['degradation'], result['plain'])}",
        f"- Residual nets better with depth (resnet56 lower test error than resnet20): {_answer(result['deeper_resnet_better'], result['residual'])}",
        f"- Reproduces the paper's finding: {'not yet decidable' if reproduced is None else 'yes' if reproduced else 'no'}",
    ]
    if not result["same_recipe"]:
        lines.append(f"- Caution: the runs do not share one recipe: their train configs differ in {', '.join(result['recipe_differs_in'])}.")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, (title, names) in zip(axes, PANELS.items()):
        for name, color in zip(names, ("tab:orange", "tab:red")):
            run = runs.get(name)
            if run is None or not run.history:
                axis.plot([], [], color=color, label=f"{name} (missing)")
                continue
            epochs = [row["epoch"] for row in run.history]
            suffix = "" if run.status == "finished" else f" ({run.progress})"
            axis.plot(epochs, run.errors("train_top1"), color=color, linestyle="--", linewidth=0.9)
            axis.plot(epochs, run.errors("test_top1"), color=color, linewidth=2.2, label=f"{name}{suffix}")
        axis.set_title(f"{title} (dashed: training error, bold: test error)", fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_ylabel("error (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help="comma-separated run directories or checkpoints with a history: .pt files, or pretrained:NAME (a shipped model)")
    parser.add_argument("--output-dir", help="default benchmarks/results/cpu-<date>")
    args = parser.parse_args(argv)
    from resnet_deploy.checkpoint import checkpoint_argument  # imports torch: only when a run is read

    try:
        paths = [checkpoint_argument(part.strip()) for part in args.runs.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --runs: {exc}")
    runs = load_runs(paths)
    result = verdict(runs)
    command = "python benchmarks/plain_vs_residual.py " + " ".join(argv if argv is not None else sys.argv[1:])
    output_dir = Path(args.output_dir or REPO / "benchmarks" / "results" / f"cpu-{datetime.date.today()}")
    report = {
        "benchmark": "plain_vs_residual",
        "command": command.strip(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": {name: {**{k: v for k, v in asdict(run).items() if k != "history"}, "final": run.final(),
                        "train_error": run.errors("train_top1"), "test_error": run.errors("test_top1")} for name, run in runs.items()},
        "verdict": result,
    }  # fmt: skip
    write_json(output_dir / "plain_vs_residual.json", report)
    atomic_write_text(output_dir / "plain_vs_residual.md", markdown(runs, result, command.strip()))
    plot(runs, output_dir / "plain_vs_residual.png")
    print(f"wrote {output_dir}/plain_vs_residual.{{json,md,png}}")
    return report


if __name__ == "__main__":
    main()
