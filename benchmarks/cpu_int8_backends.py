#!/usr/bin/env python
"""Every CPU deployment path of one checkpoint side by side: speed at batch 1, 64 and 256 in
interleaved rounds, batch-1 latency, top-1 agreement with FP32, and which path to ship per batch size.

    python benchmarks/cpu_int8_backends.py --export exports/r20 --export exports/r20-cpu \\
        --quantized calibration/r20-cpu --data-dir ../shared/datasets/cifar10-jpeg.tar.xz --threads 2

Rows (each skipped with its reason when its artifact or package is missing):

* PyTorch FP32 eager (the baseline) and PyTorch int8 (the quantize artifact through Inductor/oneDNN);
* ONNX Runtime FP32, resnet-deploy's int8 ONNX files (U8S8 ``cpu`` and S8S8 ``tensorrt`` schemes), and
  ONNX Runtime's own ``quantize_static`` model of the same FP32 ONNX and calibration images;
* OpenVINO FP32, BF16 (where the CPU has it) and int8 on the same ONNX files, for each ``--ov-hints``;
* OpenVINO's own flow: NNCF's ``nncf.quantize`` on the same FP32 ONNX and calibration images
  (``stock_flows.nncf_quantize_openvino``), compiled with the same threads and hints as the OpenVINO
  rows (skipped when nncf is not installed: ``pip install "resnet-deploy[nncf]"``).

Speed: all runners are activated once, then ``--rounds`` rounds each measure every (batch size, row)
in turn with ``bench.measure_latency``; a shared machine drifts by tens of percent within minutes,
so back-to-back rounds and their medians are the fair comparison. Accuracy: the test split
(``--test-subset`` caps it) through every row with ``bench.run_benchmark``.

Writes benchmarks/results/cpu-<date>[-<label>]/cpu_int8_backends.json and .md. Run it on an idle
machine with ``--threads`` at the physical cores; figures from a busy machine are worthless.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from cpu_latency import stock_int8_onnx  # noqa: E402
from stock_flows import NNCF_SETTINGS, nncf_quantize_openvino  # noqa: E402
from resnet_deploy.backends import OnnxRuntimeRunner, OpenVinoRunner, RunnerOptions, SkippedRunner, openvino_installed  # noqa: E402
from resnet_deploy.bench import (  # noqa: E402
    BenchSettings,
    build_runners,
    collect_environment,
    latency_input,
    load_exports,
    measure_latency,
    run_benchmark,
)
from resnet_deploy.checkpoint import checkpoint_argument, load_checkpoint  # noqa: E402
from resnet_deploy.data import load_dataset  # noqa: E402
from resnet_deploy.fileio import atomic_write_text, write_json  # noqa: E402
from resnet_deploy.quantize.calibration import calibration_batches  # noqa: E402

STOCK_NAME = "onnxruntime-int8-quantize_static"
NNCF_NAME = "openvino-int8-nncf"  # one row per --ov-hints, "-throughput" appended as for the OpenVINO rows
BASELINE = "pytorch-fp32"


# ============================================================================================ rows


def library_rows(loaded, args, exports, hint: str) -> list:
    """The rows ``resnet-deploy bench`` would build for these artifacts (one OpenVINO hint)."""
    backends = ["pytorch", "onnxruntime", "openvino"] if hint == args.ov_hints[0] else ["openvino"]
    options = RunnerOptions(backends=backends, precisions=["fp32", "bf16", "int8"], threads=args.threads, ov_hint=hint)
    rows = build_runners(loaded.model, options, exports=exports, quantized=args.quantized, checkpoint=loaded.path)
    if hint != args.ov_hints[0]:
        rows = [r for r in rows if r.backend == "openvino"]  # the baseline comes once, from the first hint
    return [r for r in rows if not (isinstance(r, SkippedRunner) and r.precision == "bf16" and r.backend == "pytorch")]


def stock_row(exports, dataset, normalization, args, workdir: Path):
    """ONNX Runtime's own quantize_static model of the export's FP32 ONNX (same calibration images)."""
    path = stock_int8_onnx(fp32_onnx(exports), dataset, normalization, args.calib_size, workdir)
    return OnnxRuntimeRunner(path, precision="int8", name=STOCK_NAME, threads=args.threads)


def fp32_onnx(exports) -> Path:
    export_dir, manifest = exports[0]
    return Path(export_dir) / next(a["path"] for a in manifest["artifacts"] if a["kind"] == "onnx" and a["precision"] == "fp32")


def nncf_rows(exports, dataset, normalization, args, workdir: Path) -> list:
    """OpenVINO's own flow: NNCF on the export's FP32 ONNX (same calibration images as the other int8
    flows), one OpenVINO row per hint with the settings of the OpenVINO rows."""
    names = [NNCF_NAME + ("" if hint == "latency" else f"-{hint}") for hint in args.ov_hints]
    missing = [package for package in ("nncf", "openvino") if importlib.util.find_spec(package) is None]
    if missing or not openvino_installed():
        reason = f"{' and '.join(missing)} not installed (pip install \"resnet-deploy[nncf]\")"
        return [SkippedRunner(name, "openvino", "int8", "cpu", reason) for name in names]
    images = calibration_batches(dataset, args.calib_size)
    path = nncf_quantize_openvino(fp32_onnx(exports), workdir / "nncf-int8.xml", images, normalization, preset=args.nncf_preset)
    return [OpenVinoRunner(path, precision="int8", name=name, threads=args.threads, hint=hint) for name, hint in zip(names, args.ov_hints)]


# ============================================================================================ speed


def interleaved_rounds(runners: list, batches: dict[int, np.ndarray], rounds: int, settings: BenchSettings) -> dict:
    """{row: {batch: [measure_latency entry per round]}}, rows measured in turn within each round.
    A row that fails at a batch size keeps the error entry and is not measured there again."""
    entries: dict[str, dict[int, list]] = {r.name: {b: [] for b in batches} for r in runners}
    for round_index in range(rounds):
        for size, batch in batches.items():
            for runner in runners:
                done = entries[runner.name][size]
                if done and done[-1]["status"] != "ok":
                    continue
                done.append(_measure(runner, batch, settings))
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr)
    return entries


def _measure(runner, batch: np.ndarray, settings: BenchSettings) -> dict:
    try:
        return measure_latency(runner, batch, settings)
    except Exception as exc:  # noqa: BLE001 - one broken row must not end the comparison
        return {"batch_size": int(batch.shape[0]), "status": "error", "message": f"{type(exc).__name__}: {exc}"}


def summarise(per_round: list[dict]) -> dict:
    """Medians over rounds of throughput and of each round's p50 / p90 latency."""
    ok = [e for e in per_round if e["status"] == "ok"]
    if not ok:
        return {"status": "error", "message": per_round[-1].get("message") if per_round else "not measured"}
    return {
        "status": "ok",
        "images_per_sec": statistics.median(e["images_per_sec"] for e in ok),
        "p50_ms": statistics.median(e["p50_ms"] for e in ok),
        "p90_ms": statistics.median(e["p90_ms"] for e in ok),
        "rounds_images_per_sec": [e["images_per_sec"] for e in ok],
    }


def activate_all(runners: list) -> tuple[list, dict]:
    """(active runners, {name: reason} of those that could not start)."""
    active, failed = [], {}
    for runner in runners:
        try:
            active.append(runner.activate())
        except Exception as exc:  # noqa: BLE001 - BackendUnavailable and friends: reported, not fatal
            failed[runner.name] = str(exc)
    return active, failed


# ============================================================================================ judgement


def fastest(rows: list[dict], size: int, eligible) -> dict | None:
    candidates = [r for r in rows if eligible(r) and r["speed"].get(size, {}).get("status") == "ok"]
    return max(candidates, key=lambda r: r["speed"][size]["images_per_sec"], default=None)


def accurate_enough(row: dict, max_drop: float) -> bool:
    """Eligible for a recommendation: measured, and int8/bf16 within ``max_drop`` top-1 points of FP32."""
    accuracy = row.get("accuracy")
    return row["status"] == "ok" and accuracy is not None and -accuracy["delta_top1"] <= max_drop


def recommendations(rows: list[dict], sizes: list[int], max_drop: float) -> dict:
    """Per batch size: the fastest path overall and the fastest int8 path within ``max_drop``."""
    result = {}
    for size in sizes:
        best = fastest(rows, size, lambda r: accurate_enough(r, max_drop))
        best_int8 = fastest(rows, size, lambda r: r["precision"] == "int8" and accurate_enough(r, max_drop))
        result[size] = {"fastest": best["name"] if best else None, "fastest_int8": best_int8["name"] if best_int8 else None}
    return result


def nncf_version() -> str | None:
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        return None


def is_peer(name: str) -> bool:
    """A row of another project's int8 flow (not resnet-deploy's int8 model)."""
    return name == STOCK_NAME or name == NNCF_NAME or name.startswith(NNCF_NAME + "-")


def peer_speed(rows: list[dict], peer: str, size: int) -> float | None:
    """A peer's images/s at ``size``: its fastest row (the NNCF peer has one row per OpenVINO hint)."""
    speeds = [r["speed"].get(size, {}).get("images_per_sec") for r in rows if r["name"] == peer or r["name"].startswith(peer + "-")]
    return max((s for s in speeds if s), default=None)


def ratios(rows: list[dict], sizes: list[int], max_drop: float, peak: float | None) -> dict:
    """The fastest resnet-deploy int8 path against the peers and the compute-bound estimate."""
    out = {}
    for size in sizes:
        ours = fastest(rows, size, lambda r: r["precision"] == "int8" and not is_peer(r["name"]) and accurate_enough(r, max_drop))
        if ours is None:
            continue
        speed = ours["speed"][size]["images_per_sec"]
        entry = {"ours": ours["name"], "images_per_sec": speed}
        for peer in (STOCK_NAME, "pytorch-int8-x86", NNCF_NAME):
            other = peer_speed(rows, peer, size)
            entry[f"vs_{peer}"] = speed / other if other else None
        entry["vs_compute_bound_estimate"] = speed / peak if peak else None
        out[size] = entry
    return out


# ============================================================================================ compute bound


def model_macs(model) -> int:
    """Multiply-accumulates of one 32x32 image through the model's Conv2d and Linear layers."""
    import torch

    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            total += output[0].numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    return total


def cpu_ghz() -> float | None:
    """The CPU's clock as /proc/cpuinfo reports it (its current one; pass --cpu-ghz for the real one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return None


def compute_bound(macs: int, cores: int, macs_per_cycle: float, ghz: float | None) -> dict:
    """images/s if every core retired ``macs_per_cycle`` int8 MACs each cycle and nothing else ran."""
    peak = cores * macs_per_cycle * ghz * 1e9 / macs if ghz else None
    return {"macs_per_image": macs, "cores": cores, "int8_macs_per_cycle_per_core": macs_per_cycle, "ghz": ghz, "images_per_sec": peak}


# ============================================================================================ ONNX Runtime graphs


def ort_graphs(runners: list) -> dict:
    """What ONNX Runtime runs for each int8 ONNX row (nodes, QLinearConv/QLinearAdd/QGemm, float leftovers)."""
    from resnet_deploy.export.qdq import ort_int8_kernels

    return {r.name: ort_int8_kernels(r.path) for r in runners if r.backend == "onnxruntime" and r.precision == "int8"}


# ============================================================================================ report


def markdown(report: dict) -> str:
    sizes = report["settings"]["batch_sizes"]
    lines = [f"# CPU deployment paths: {report['model']['name']} ({report['run_name']})", ""]
    hw, sw = report["hardware"], report["software"]
    lines += [
        f"{hw['cpu_model']}, {report['settings']['threads']} threads, load average at start {hw.get('load_average')}; "
        f"torch {sw['torch']}, onnxruntime {sw.get('onnxruntime')}, openvino {sw.get('openvino')}"
        f"{_nncf_note(report['settings'].get('nncf'))}. "
        f"{report['settings']['rounds']} interleaved rounds; figures are medians over rounds. "
        f"Accuracy on {report['dataset']['size']} {report['dataset']['name']} test images.",
        "",
    ]
    lines += _speed_table(report["rows"], sizes)
    lines += _recommendation_lines(report, sizes)
    lines += _graph_table(report["onnxruntime_graphs"])
    skipped = [r for r in report["rows"] if r["status"] != "ok"]
    if skipped:
        lines += ["## Rows that did not run", ""] + [f"- `{r['name']}` {r['status']}: {r['reason']}" for r in skipped] + [""]
    return "\n".join(lines)


def _speed_table(rows: list[dict], sizes: list[int]) -> list[str]:
    header = "| row | top-1 % | Δ pts | agree % | " + " | ".join(f"img/s bs {s}" for s in sizes) + " | bs 1 p50 / p90 ms |"
    lines = ["## Speed and accuracy", "", header, "|" + "---|" * (5 + len(sizes))]
    for row in rows:
        if row["status"] != "ok":
            continue
        acc = row.get("accuracy") or {}
        speeds = [_fmt(row["speed"].get(s, {}).get("images_per_sec"), ",.0f") for s in sizes]
        one = row["speed"].get(1, {})
        latency = f"{_fmt(one.get('p50_ms'), '.3f')} / {_fmt(one.get('p90_ms'), '.3f')}" if one.get("status") == "ok" else "–"
        lines.append(f"| `{row['name']}` | {_fmt(acc.get('top1'), '.2f')} | {_fmt(acc.get('delta_top1'), '+.2f')} | "
                     f"{_fmt(acc.get('agreement'), '.2f')} | " + " | ".join(speeds) + f" | {latency} |")
    return lines + [""]


def _recommendation_lines(report: dict, sizes: list[int]) -> list[str]:
    lines = ["## Recommendation per batch size", "",
             f"(rows within {report['settings']['max_top1_drop']} top-1 points of FP32 PyTorch)", ""]
    for size in sizes:
        pick = report["recommendation"].get(size) or {}
        lines.append(f"- fastest at batch {size}: `{pick.get('fastest')}`; fastest int8: `{pick.get('fastest_int8')}`")
    lines.append("")
    for size, entry in report["ratios"].items():
        parts = [f"{key.removeprefix('vs_')} {value:.2f}x" for key, value in entry.items() if key.startswith("vs_") and value]
        lines.append(f"- batch {size}: `{entry['ours']}` {entry['images_per_sec']:,.0f} img/s; " + ", ".join(parts))
    bound = report["compute_bound"]
    if bound["images_per_sec"]:
        lines.append(f"- compute-bound estimate: {bound['images_per_sec']:,.0f} img/s ({bound['macs_per_image'] / 1e6:.1f} M MAC/image, "
                     f"{bound['cores']} cores x {bound['int8_macs_per_cycle_per_core']} int8 MAC/cycle x {bound['ghz']:.2f} GHz)")
    return lines + [""]


def _graph_table(graphs: dict) -> list[str]:
    if not graphs:
        return []
    lines = ["## What ONNX Runtime runs (optimised graph, ORT_ENABLE_ALL)", "",
             "| file | nodes | QLinearConv | QLinearAdd | QGemm | float Conv | float Gemm | float Add | Q left | DQ left |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, g in graphs.items():
        lines.append(f"| `{name}` | {g['nodes']} | {g['qlinear_conv']} | {g['other_qlinear'].get('QLinearAdd', 0)} | {g['qgemm']} | "
                     f"{g['float_conv']} | {g['float_gemm']} | {g['float_add']} | {g['quantize_linear_left']} | {g['dequantize_linear_left']} |")
    return lines + [""]


def _nncf_note(nncf: dict | None) -> str:
    if not nncf or not nncf.get("version"):
        return ""
    return f", nncf {nncf['version']} (preset {nncf['preset']}, target {nncf['target_device']})"


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


# ============================================================================================ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, action="append", help="export directory (manifest.json); repeat for the other int8 scheme")
    parser.add_argument("--quantized", action="append", default=[], help="quantize artifact for the PyTorch int8 (Inductor) row (repeatable)")
    parser.add_argument("--checkpoint", type=checkpoint_argument, help="FP32 checkpoint, a file or pretrained:NAME (a shipped model, sha256 checked; see resnet-deploy models) [the one the first export manifest names]")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--test-subset", type=int, help="accuracy on N seeded test images instead of all")
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over every (batch size, row)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement, at least")
    parser.add_argument("--max-time", type=float, default=4.0, help="seconds per measurement, at most")
    parser.add_argument("--ov-hints", default="latency,throughput", help="OpenVINO PERFORMANCE_HINTs to run (comma list)")
    parser.add_argument("--calib-size", type=int, default=1000,
                        help="calibration images of the peers, ONNX Runtime's quantize_static and NNCF (0: no peer rows)")
    parser.add_argument("--nncf-preset", default=NNCF_SETTINGS["preset"], choices=["performance", "mixed"],
                        help="NNCF peer's preset [performance: NNCF's default for ReLU CNNs]")
    parser.add_argument("--no-nncf", action="store_true", help="leave out the NNCF + OpenVINO peer")
    parser.add_argument("--max-top1-drop", type=float, default=0.5, help="top-1 points below FP32 a recommended path may lose")
    parser.add_argument("--int8-macs-per-cycle-per-core", type=float, default=64.0,
                        help="for the compute-bound estimate (64: one 512-bit VNNI dot product per cycle)")
    parser.add_argument("--cpu-ghz", type=float, help="clock for the estimate [/proc/cpuinfo's current clock]")
    parser.add_argument("--label", help="suffix of the results folder name")
    parser.add_argument("--output-root", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    args.ov_hints = [h.strip() for h in args.ov_hints.split(",") if h.strip()]
    return args


def load_inputs(args):
    exports = load_exports(args.export)
    checkpoint = args.checkpoint or exports[0][1]["checkpoint"]["path"]
    loaded = load_checkpoint(checkpoint)
    dataset = load_dataset(args.dataset, args.data_dir)
    if args.test_subset:
        dataset = dataset.subset(None, args.test_subset)
    return exports, loaded, dataset


def accuracy_rows(runners: list, dataset, loaded, batch_size: int) -> dict:
    """{row name: bench result row} from one accuracy pass over the test split per row."""
    settings = BenchSettings(batch_sizes=[1], accuracy_batch_size=batch_size, latency=False)
    measured = run_benchmark(runners, dataset.test_images, dataset.test_labels, loaded.normalization, settings)
    return {row["name"]: row for row in measured["rows"]}


def main() -> int:
    args = parse_args()
    exports, loaded, dataset = load_inputs(args)
    name = f"cpu-{datetime.date.today().isoformat()}" + (f"-{args.label}" if args.label else "")
    output_dir = Path(args.output_root) / name
    settings = BenchSettings(batch_sizes=args.batch_sizes, min_seconds=args.min_time, max_seconds=max(args.min_time, args.max_time))
    with tempfile.TemporaryDirectory(prefix="cpu-int8-") as workdir:
        runners = [r for hint in args.ov_hints for r in library_rows(loaded, args, exports, hint)]
        if args.calib_size > 0:
            runners.append(stock_row(exports, dataset, loaded.normalization, args, Path(workdir)))
            if not args.no_nncf:
                runners.extend(nncf_rows(exports, dataset, loaded.normalization, args, Path(workdir)))
        rows = accuracy_rows(runners, dataset, loaded, batch_size=256)
        measurable = [r for r in runners if not isinstance(r, SkippedRunner) and rows[r.name]["status"] == "ok"]
        active, failed = activate_all(measurable)
        try:
            batches = {size: latency_input(size, dataset.test_images, loaded.normalization) for size in args.batch_sizes}
            speeds = interleaved_rounds(active, batches, args.rounds, settings)
        finally:
            for runner in active:
                runner.deactivate()
        graphs = ort_graphs(measurable)
    report_rows = [_report_row(rows[r.name], speeds.get(r.name, {}), failed.get(r.name)) for r in runners]
    environment = collect_environment()
    bound = compute_bound(model_macs(loaded.model), args.threads, args.int8_macs_per_cycle_per_core, args.cpu_ghz or cpu_ghz())
    report = {
        "run_name": name, "command": [sys.executable, *sys.argv], **environment,
        "model": {"name": loaded.spec.name, "checkpoint": str(loaded.path), "sha256": loaded.sha256},
        "dataset": {"name": dataset.name, "size": int(len(dataset.test_images))},
        "settings": {"threads": args.threads, "batch_sizes": args.batch_sizes, "rounds": args.rounds, "min_time": args.min_time,
                     "max_time": args.max_time, "ov_hints": args.ov_hints, "calib_size": args.calib_size, "max_top1_drop": args.max_top1_drop,
                     "nncf": None if args.no_nncf else {**NNCF_SETTINGS, "preset": args.nncf_preset, "version": nncf_version()}},
        "rows": report_rows,
        "recommendation": recommendations(report_rows, args.batch_sizes, args.max_top1_drop),
        "ratios": ratios(report_rows, args.batch_sizes, args.max_top1_drop, bound["images_per_sec"]),
        "compute_bound": bound,
        "onnxruntime_graphs": graphs,
    }
    write_json(output_dir / "cpu_int8_backends.json", report)
    atomic_write_text(output_dir / "cpu_int8_backends.md", markdown(report))
    print(markdown(report))
    print(f"results: {output_dir / 'cpu_int8_backends.json'}")
    return 0


def _report_row(row: dict, speed: dict, activation_error: str | None) -> dict:
    out = {key: row[key] for key in ("name", "backend", "precision", "status", "reason", "settings", "accuracy")}
    if activation_error:
        out.update(status="error", reason=activation_error)
    out["speed"] = {size: summarise(entries) for size, entries in speed.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
