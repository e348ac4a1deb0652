"""Writing the inspect record: ``inspect.json``, the Markdown report ``inspect.md`` and ``sqnr.png``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..fileio import atomic_path, atomic_write_text, write_json
from ..optional import PLOTS_INSTALL, has_matplotlib, import_pyplot
from .results import PYTORCH_INT8

log = logging.getLogger(__name__)

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "inspect.json", "inspect.md", "sqnr.png"


def write_outputs(record: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """inspect.json, inspect.md and sqnr.png (without matplotlib: no plot, a warning says so)."""
    output_dir = Path(output_dir)
    paths = {"json": output_dir / JSON_NAME, "markdown": output_dir / MARKDOWN_NAME, "plot": output_dir / PLOT_NAME}
    plot = has_matplotlib()
    write_json(paths["json"], record)
    atomic_write_text(paths["markdown"], markdown(record, plot=plot))
    if not plot:
        log.warning(f"the SQNR plot was not drawn: matplotlib is not installed ({PLOTS_INSTALL})")
        del paths["plot"]
        return paths
    plot_sqnr(record, paths["plot"])
    return paths


# --------------------------------------------------------------------------------------------- text


def _db(value) -> str:
    return "identical" if value is None else f"{value:.1f} dB"


def _pct(value: float) -> str:
    return f"{100 * value:.3g}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return lines + [""]


def _implementations(record: dict) -> list[str]:
    rows = []
    for name, entry in record["implementations"].items():
        top1 = record["top1"].get(name)
        rows.append([name, "yes" if entry.get("ran") else "no", f"{top1:.2f}%" if top1 is not None else "-",
                     entry.get("what") or entry.get("reason", "")])
    lines = _table(["implementation", "ran", f"top-1 on the {record['images']['count']} images", "what"], rows)
    ort = record["implementations"].get("onnxruntime", {})
    exposure, naive = ort.get("exposure"), ort.get("naive_exposure")
    if exposure:
        lines.append(f"ONNX Runtime's layer outputs are read from its own optimised graph ({exposure['method']}): logits "
                     f"bit-exact with the ordinary session: **{'yes' if exposure['logits_bit_exact'] else 'NO'}**.")
    if naive and not naive["fusions_unchanged"]:
        before, after = naive["kernels_before"], naive["kernels_after"]
        effect = naive["logit_effect"]
        lines.append(f"Adding the same outputs to the original graph would break ONNX Runtime's Q/DQ fusion (QLinearConv "
                     f"{before['qlinear_conv']} -> {after['qlinear_conv']}) and move the logits by up to "
                     f"{effect['max_abs_diff']:.3g} ({effect['disagreements']} top-1 changes on {effect['count']} images).")
    return lines + [""]


def _loss_section(record: dict) -> list[str]:
    ranking = record["rankings"]["quantization_loss"]
    lines = ["## Layers that lose most against FP32", "",
             "Each layer computed alone in int8 from FP32 inputs (its own quantization error), worst first.", ""]
    rows = [[i + 1, f"`{r['name']}`", _db(r["sqnr_db_alone"]), _db(r["sqnr_db_in_network"]), _pct(r["clipped_fraction"]),
             r["suggestion"]] for i, r in enumerate(ranking)]
    return lines + _table(["#", "layer", "SQNR alone", "SQNR in the network", "clipped", "suggestion"], rows)


def _divergence_section(record: dict) -> list[str]:
    lines = ["## Where int8 implementations diverge", "",
             f"Each layer computed by {PYTORCH_INT8} from the other implementation's own int8 inputs: a difference is "
             "that layer's, not inherited. Mismatch: outputs a step or more apart.", ""]
    for impl, ranking in record["rankings"]["divergence"].items():
        lines.append(f"### {PYTORCH_INT8} vs {impl}")
        lines.append("")
        if not ranking:
            lines += ["No layer differs.", ""]
            continue
        rows = [[i + 1, f"`{r['name']}`", _pct(r["local_mismatch_fraction"]), _db(r["local_sqnr_db"]),
                 f"{r['local_max_abs_error']:.3g}", r["diagnosis"]] for i, r in enumerate(ranking)]
        lines += _table(["#", "layer", "mismatch", "SQNR", "max abs error", "diagnosis"], rows)
    not_run = [f"{name}: {entry['reason']}" for name, entry in record["implementations"].items() if not entry.get("ran")]
    return lines + ([f"Not compared: {'; '.join(not_run)}.", ""] if not_run else [])


def _batch_section(record: dict) -> list[str]:
    rows = []
    for impl, result in record["batch_sizes"].items():
        if not result.get("batch_1"):
            rows.append([impl, "-", "-", "-", result.get("reason", "")])
            continue
        rows.append([impl, f"{result['batch_1']['top1_agreement']:.2f}%", f"{result['max_batch_result']['top1_agreement']:.2f}%",
                     f"{result['batch_1_vs_max']['top1_agreement']:.2f}%", f"largest profile batch {result['max_batch']}"])
    return ["## Accuracy across batch sizes", "", f"Top-1 agreement with {PYTORCH_INT8}.", ""] + _table(
        ["implementation", "batch 1", "largest batch", "batch 1 vs largest", "note"], rows)


def _lint_section(record: dict) -> list[str]:
    from .lint import describe

    lint = record["lint"]
    lines = ["## Q/DQ lint: what TensorRT will build", "", describe(lint["summary"]) + f" ({lint['summary']['source']}).", ""]
    rows = [[f"`{r['layer'] or r['node']}`", r["node"], r["precision"], r["output"], r["pattern"],
             "; ".join(r["reasons"] + r["warnings"][:1])] for r in lint["rows"]]
    lines += _table(["layer", "ONNX node", "precision", "output", "predicted TensorRT layer", "why / warnings"], rows)
    builder = lint.get("builder", {})
    if builder.get("ran"):
        verdict = "agree on every layer" if builder["agree"] else f"disagree on {len(builder['disagreements'])} layer(s)"
        lines.append(f"Against TensorRT ({builder['source']}): lint and builder {verdict}. Engine inspector: {builder['engine_inspector']}.")
    else:
        lines.append(f"Not checked against TensorRT: {builder.get('reason', 'no TensorRT')}.")
    return lines + [""]


def _layers_section(record: dict) -> list[str]:
    impls = [name for name in record["implementations"] if name != "fp32" and record["implementations"][name].get("ran")]
    rows = []
    for layer in record["layers"]:
        local = [f"{_pct(entry['local']['mismatch_fraction'])}" for entry in layer["between"].values()]
        rows.append([f"`{layer['name']}`", layer["kind"], " + ".join(layer["onnx"]["nodes"]),
                     " + ".join(layer["tensorrt"]["predicted"]["onnx_nodes"])]
                    + [_db(layer["sqnr_db"].get(impl)) if impl in layer["sqnr_db"] else "-" for impl in impls] + local)
    header = ["layer", "kind", "ONNX nodes", "TensorRT layer (predicted)"] + [f"SQNR {impl}" for impl in impls] + [
        f"mismatch {key}" for key in (record["layers"][0]["between"] if record["layers"] else {})]
    return ["## Every layer", ""] + _table(header, rows)


def markdown(record: dict, plot: bool = True) -> str:
    model = record["model"]
    lines = [f"# int8 inspection: {model['name']} ({record['int8']['target']} scheme, {record['int8']['method']} calibration)", "",
             f"- checkpoint: `{record['checkpoint']['path']}`", f"- int8 artifact: `{record['int8']['artifact_dir']}`",
             f"- ONNX: `{record['onnx']['path']}` ({record['onnx']['source']})", f"- images: {record['images']['source']}",
             f"- took {record['seconds']:.0f} s", "", "## Implementations", ""]
    lines += _implementations(record)
    for section in (_loss_section, _divergence_section, _batch_section, _lint_section, _layers_section):
        lines += section(record)
    if plot:
        lines.append(f"![SQNR per layer]({PLOT_NAME})")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- plot


def plot_sqnr(record: dict, path: str | os.PathLike) -> None:
    """SQNR against FP32 per layer in network order, one line per int8 implementation (identical
    outputs, an infinite SQNR, leave a gap)."""
    plt = import_pyplot("inspect's SQNR plot")

    names = [layer["name"] for layer in record["layers"]]
    impls = list(dict.fromkeys(impl for layer in record["layers"] for impl in layer["sqnr_db"]))
    figure, axis = plt.subplots(figsize=(max(8.0, 0.32 * len(names)), 4.8))
    for impl in impls:
        values = [layer["sqnr_db"].get(impl) for layer in record["layers"]]
        axis.plot(range(len(names)), [float("nan") if v is None else v for v in values], marker="o", markersize=3, label=impl)
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names, rotation=90, fontsize=7)
    axis.set_ylabel("SQNR vs FP32 (dB)")
    axis.set_title(f"{record['model']['name']} int8 ({record['int8']['target']}): SQNR per layer, {record['images']['count']} images")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
