"""The run's report: ``report.md`` with PNG plots beside it (matplotlib, no display needed).

Plots: accuracy against measured latency for every candidate with the Pareto front and the
target marked; the chosen per-layer filter types, schemes and rates; per-layer latency of the
final model next to the dense one (the runner's per-layer timing); the search's progress.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .tasks import fmt_metric  # noqa: E402


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (latency, accuracy) points: no other point is at least as
    fast and at least as accurate and strictly better in one. Sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_acc = [], -1.0
    for i in order:
        if points[i][1] > best_acc:
            front.append(i)
            best_acc = points[i][1]
    return front


def _estimated(r: dict) -> bool:
    return r.get("latency_source") == "table" and not r.get("remeasured", False)


def _plot_scatter(path: Path, done: list[dict], s: dict) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    est = [r for r in done if _estimated(r)]
    if est:  # --latency table: what was not re-measured is drawn apart, off the front
        ax.scatter([r["latency_ms"] for r in est], [r["accuracy"] for r in est], s=10,
                   marker="x", c="tab:gray", alpha=0.4, label="table estimate only")
        done = [r for r in done if not _estimated(r)]
    pts = [(r["latency_ms"], r["accuracy"]) for r in done]
    ok = [p for p, r in zip(pts, done, strict=True) if r["meets_target"]]
    over = [p for p, r in zip(pts, done, strict=True) if not r["meets_target"]]
    if ok:
        ax.scatter(*zip(*ok, strict=True), s=18, c="tab:blue", label="meets target")
    if over:
        ax.scatter(*zip(*over, strict=True), s=18, c="tab:gray", alpha=0.6, label="over target")
    front = pareto(pts)
    if front:
        fx, fy = zip(*(pts[i] for i in front), strict=True)
        ax.step(fx, fy, where="post", c="tab:orange", lw=1.2)
        ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="tab:orange",
                   label="Pareto front")
    targets = s.get("targets") or []
    for k, t in enumerate(targets or [{"target_ms": s["target_ms"], "chosen": s.get("chosen")}]):
        ax.axvline(t["target_ms"], c="tab:red", ls="--", lw=1,
                   label="_" if k else "targets" if targets else "target")
        if targets:
            ax.text(t["target_ms"], 1.0, f" {t['target_ms']:g} ms", color="tab:red",
                    fontsize=7, va="top", transform=ax.get_xaxis_transform())
        ch = t.get("chosen")
        if ch:
            ax.scatter([ch["latency_ms"]], [ch["accuracy"]], marker="*", s=220, c="gold",
                       edgecolors="k", zorder=5, label="chosen" if k == 0 else "_")
    if s.get("dense_ms") and s.get("phase1", {}).get("acc_after") is not None:
        ax.scatter([s["dense_ms"]], [s["phase1"]["acc_after"]], marker="D", s=40, c="k",
                   label="dense (phase 1)")
    ax.set_xscale("log")
    ax.set_xlabel("measured latency, median of the runner's timed runs (ms, log scale)")
    ax.set_ylabel("validation PSNR (Y), dB" if s.get("task") == "sr"
                  else "validation accuracy after the short fine-tune")
    ax.set_title("phase 2 candidates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _precision_section(s: dict, done: list[dict], p3: dict, fmt) -> list[str]:
    """--precisions: what was searched and how int8 candidates were scored."""
    q = [r for r in done if r.get("int8_layers") is not None]
    lines = [f"Precision searched per layer ({', '.join(s['precisions'])}): int8 offered where "
             f"the quantization pass runs the layer in int8. {len(q)} of {len(done)} "
             f"evaluated candidates have int8 layers; their accuracy is measured on the "
             f"quantized model exactly as the int8 kernels compute it (fine-tuned in float32, "
             f"calibrated on the first training images), their latency on the int8 bundle."]
    if q:
        drop = [r["accuracy_fp32"] - r["accuracy"] for r in q]
        mean = sum(drop) / len(drop)
        lines[-1] += (f" Against the same fine-tuned model in float32, quantizing "
                      f"{'lost' if mean >= 0 else 'gained'} {fmt(abs(mean))} of accuracy on "
                      f"average (largest loss {fmt(max(0.0, max(drop)))}).")
    if p3.get("final_acc_fp32") is not None:
        lines.append(f"Final model: {fmt(p3['final_acc'])} quantized, "
                     f"{fmt(p3['final_acc_fp32'])} in float32; int8 in the compiled bundle: "
                     f"{', '.join(f'`{n}`' for n in p3.get('int8_layers', [])) or 'none'}.")
    return [*lines, ""]


def _plot_layers(path: Path, layers: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(layers) + 1.2))
    names = [la["name"] for la in layers]
    ratios = [la["ratio"] for la in layers]
    colors = {"none": "lightgray", "filter": "tab:green", "channel": "tab:olive"}
    ax.barh(names, ratios, color=[colors.get(la["scheme"], "tab:blue") for la in layers])
    for i, la in enumerate(layers):
        ax.text(ratios[i], i, f" {la['choice']}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(0.9, max(ratios + [1.0]) * 6)
    ax.invert_yaxis()
    ax.set_xlabel("compression ratio (log); label: filter type, scheme, rate")
    ax.set_title("chosen candidate, per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _merged_names(dense: list[str], final: list[str]) -> list[str]:
    """The final model's steps in order, each dense-only step placed before the first final
    step that came from it (b1.0 before b1.0.0, b1.0.1 when it became depthwise+pointwise)."""
    names = list(final)
    for d in dense:
        if d in names:
            continue
        at = next((i for i, n in enumerate(names) if n.startswith(d + ".")), None)
        if at is None:
            prev = dense[:dense.index(d)]
            at = max((names.index(p) + 1 for p in prev if p in names), default=0)
        names.insert(at, d)
    return names


def _plot_per_layer(path: Path, dense: list[dict], final: list[dict]) -> None:
    names = _merged_names([la["name"] for la in dense], [la["name"] for la in final])
    d = {la["name"]: la["median_ms"] for la in dense}
    f = {la["name"]: la["median_ms"] for la in final}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.5))
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], [d.get(n, 0.0) for n in names], height=0.4,
            label="dense (phase 1)", color="lightgray")
    ax.barh([i + 0.2 for i in y], [f.get(n, 0.0) for n in names], height=0.4,
            label="final", color="tab:blue")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median time per run (ms), runner's per-layer timing")
    ax.set_title("per-layer latency (compiled steps)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_progress(path: Path, records: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    done = [r for r in records if r.get("status") == "done"]
    ax.scatter([r["id"] for r in done], [r["reward"] for r in done], s=12, c="tab:blue",
               label="reward")
    best, xs, ys = None, [], []
    for r in sorted(done, key=lambda r: r["id"]):
        if r["meets_target"] and (best is None or r["accuracy"] > best):
            best = r["accuracy"]
        if best is not None:
            xs.append(r["id"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", c="tab:orange", label="best accuracy meeting target")
    ax.set_xlabel("candidate")
    ax.set_ylabel("reward / accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sr_section(s: dict, p1: dict, p3: dict) -> list[str]:
    """Super-resolution: the metric is PSNR (Y channel) in dB; SSIM and the bicubic baseline
    beside it, and the frame the device timed."""
    base = s.get("baseline") or {}
    shape = s.get("input_shape") or []
    frame = (f"{shape[3] * 2}×{shape[2] * 2} output frame ({shape[3]}×{shape[2]} input)"
             if len(shape) == 4 else "")
    lines = ["", "## Super-resolution ×2", "",
             f"Quality is PSNR in dB on the Y channel (the \"accuracy\" columns), on "
             f"{s['dataset']}'s validation images, the output clamped to [0, 1] and 2 border "
             f"pixels shaved; latency is measured on the device at a {frame}.", "",
             "| | PSNR (Y) | SSIM (Y) | latency |", "| --- | --- | --- | --- |",
             f"| bicubic upscaling | {fmt_metric(base.get('psnr'), 'sr')} | "
             f"{base.get('ssim', 0):.4f} | |",
             f"| dense model after phase 1 | {fmt_metric(p1.get('acc_after'), 'sr')} | | "
             f"{_ms(s.get('dense_ms'))} |"]
    sr = (p3 or {}).get("sr")
    if sr:
        lines.append(f"| final model (phase 3) | {sr['psnr']:.2f} dB ({sr['gain_db']:+.2f} dB) "
                     f"| {sr['ssim']:.4f} | {_ms(p3.get('final_ms'))} |")
    return lines


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _targets_section(targets: list[dict], fmt) -> list[str]:
    """One search, several targets (jcw): per target the front member chosen and its final
    model, re-measured on the device."""
    lines = ["## Targets: one model per target from one search", "",
             "| target | chosen (phase 2) | phase-2 accuracy | phase-2 latency | final accuracy "
             "| final latency (re-measured) | | exported |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in targets:
        ch, p3 = t["chosen"], t.get("phase3") or {}
        verdict = ("meets" if p3.get("meets_target") else "**misses**") if p3 else ""
        where = (p3.get("exported") or {}).get("PyTorch model", "-").rsplit("/", 1)[0]
        lines.append(f"| {t['target_ms']:g} ms | {ch.get('id', '-')} | "
                     f"{fmt(ch.get('accuracy'))} | {_ms(ch.get('latency_ms'))} | "
                     f"{fmt(p3.get('final_acc'))} | {_ms(p3.get('final_ms'))} | {verdict} | "
                     f"`{where}` |")
    lines += ["", "Each chosen candidate is the most accurate measured one meeting its target "
              "(3 % under it when one is); the final latency is measured again on the device "
              "after phase 3.", ""]
    return lines


def _estimators_section(s: dict, fmt) -> list[str]:
    """What phase 2's accuracy cost per candidate; the latency table's error against the
    front's measurements on the device."""
    lines: list[str] = []
    ev = s.get("evaluator")
    if ev:
        per = ev.get("cpu_minutes_per_candidate", 0.0)
        if ev.get("evaluator") == "supernet":
            lines += [f"Accuracy by weight sharing (supernet): trained once "
                      f"{ev.get('train_s', 0):.0f} s ({ev.get('train_steps', 0)} steps), "
                      f"retrained {ev.get('rounds', 0)} rounds ({ev.get('round_s', 0):.0f} s), "
                      f"each candidate scored after recomputing BatchNorm statistics without "
                      f"fine-tuning ({ev.get('score_s', 0) / max(1, ev.get('scored', 1)):.2f} "
                      f"s each): **{per:.4f} CPU-minutes per candidate**, training included.",
                      ""]
        else:
            lines += [f"Accuracy by one-shot pruning + {s.get('finetune_epochs', 0):g} "
                      f"epoch(s) of fine-tuning: **{per:.4f} CPU-minutes per candidate**.", ""]
    tab = s.get("latency_table")
    if tab:
        lines += ["### The latency table against the device", "",
                  f"Phase 2's latencies are estimates from a per-layer table measured on the "
                  f"device first ({tab.get('table_s', 0):.0f} s; per layer, by width and "
                  f"weight density; scaled by {tab.get('scale', 1):.3f}, the dense model's "
                  f"whole-run time over its per-layer sum). Every front member and every "
                  f"candidate a target picks was measured again end to end "
                  f"({tab['remeasured']} candidates, {tab.get('seconds', 0):.0f} s): "
                  + (f"mean absolute error {tab['mean_abs_error']:.1%}, largest "
                     f"{tab['max_abs_error']:.1%}, mean {tab['mean_error']:+.1%} (measured − "
                     f"table, of measured)." if tab.get("mean_abs_error") is not None else
                     "none could be measured."), "",
                  "| id | accuracy | table | measured | error |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['id']} | {fmt(r['accuracy'])} | {r['table_ms']:.4f} ms | "
                  f"{r['measured_ms']:.4f} ms | "
                  f"{(r['measured_ms'] - r['table_ms']) / r['measured_ms']:+.1%} |"
                  for r in tab.get("rows", [])]
        lines += ["", "Targets choose among the measured candidates only.", ""]
    return lines


def write_report(run_dir: Path, s: dict, records: list[dict]) -> Path:
    """Write report.md and plots/ into ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    done = [r for r in records if r.get("status") == "done"]
    failed = [r for r in records if r.get("status") == "failed"]
    if done:
        _plot_scatter(plots / "accuracy_vs_latency.png", done, s)
        _plot_progress(plots / "progress.png", records)
    if s.get("layers"):
        _plot_layers(plots / "layers.png", s["layers"])
    p3 = s.get("phase3") or {}
    if p3.get("layers") or s.get("dense_layers"):
        _plot_per_layer(plots / "per_layer_latency.png", s.get("dense_layers", []),
                        p3.get("layers", []))
    p1 = s.get("phase1", {})
    ch = s.get("chosen") or {}
    task = s.get("task", "classify")

    def fmt(v: float | None) -> str:
        return fmt_metric(v, task)

    lines = [
        f"# NPAS search: {s['model']} on {s['dataset']}",
        "",
        f"Device **{s['device']}** ({s.get('device_desc', '')}), strategy **{s['strategy']}**, "
        f"seed {s['seed']}, run folder `{run_dir}`.",
        "",
        "## Result",
        "",
        f"| | {'PSNR (Y)' if task == 'sr' else 'accuracy'} | latency (median) | |",
        "| --- | --- | --- | --- |",
        f"| dense model after phase 1 | {fmt(p1.get('acc_after'))} | {_ms(s.get('dense_ms'))} "
        f"| |",
        f"| chosen candidate (phase 2, short fine-tune) | {fmt(ch.get('accuracy'))} | "
        f"{_ms(ch.get('latency_ms'))} | candidate {ch.get('id', '-')} |",
    ]
    if p3.get("final_acc") is not None:
        meets = "meets" if p3.get("meets_target") else "**misses**"
        lines.append(f"| final model (phase 3) | {fmt(p3['final_acc'])} | "
                     f"{_ms(p3.get('final_ms'))} (p10 {_ms(p3.get('p10_ms'))}, p90 "
                     f"{_ms(p3.get('p90_ms'))}) | {meets} the target |")
    lines += [
        "",
        f"Latency target **{s['target_ms']:.3f} ms**"
        + (f" (dense {s['dense_ms']:.3f} ms / {s['dense_ms'] / s['target_ms']:.2f})"
           if s.get("dense_ms") else "")
        + f"; the most pruned candidates measure {_ms(s.get('floor_ms'))}. "
        f"Every latency here is measured on the device by the runner: {s.get('runs', 100)} "
        f"timed runs after {s.get('warmup', 10)} warm-up, median. Reward = accuracy, × "
        f"(latency / target)^-{s.get('beta', 2.0):g} above the target.",
    ]
    if s.get("note"):
        lines += ["", f"Note: {s['note']}"]
    if task == "sr":
        lines += _sr_section(s, p1, p3)
    lines += ["", "## Phase 1: mobile-friendly operators", ""]
    reps = p1.get("replacements", [])
    if reps:
        lines.append("| where | was | now |")
        lines.append("| --- | --- | --- |")
        lines += [f"| `{r['where']}` | {r['old']} | {r['new']} |" for r in reps]
    else:
        lines.append("Nothing to replace.")
    lines += ["",
              f"Accuracy before {fmt(p1.get('acc_before'))}, with the replacements and no "
              f"training {fmt(p1.get('acc_replaced'))}, after {p1.get('epochs', 0):g} "
              f"epoch(s) of fine-tuning {fmt(p1.get('acc_after'))}."
              + (f" (The model was first trained for {p1['pretrain_epochs']:g} epochs: it "
                 f"came with random weights.)" if p1.get("pretrain_epochs") else "")]
    p2 = s.get("phase2", {})
    meeting = [r for r in done if r["meets_target"] and not _estimated(r)]
    lines += ["", "## Phase 2: scheme search", "",
              f"{len(records)} candidates evaluated ({len(failed)} failed), "
              f"{len(meeting)} meet the target (measured); {p2.get('seconds', 0):.0f} s. "
              + ("Each: realized from the supernet's shared weights, BatchNorm recomputed, "
                 "validation accuracy; " if (s.get("evaluator") or {}).get("evaluator")
                 == "supernet" else
                 f"Each: one-shot magnitude pruning, {s.get('finetune_epochs', 0):g} epoch(s) "
                 f"of fine-tuning, validation accuracy; ")
              + ("latency from the table (below)." if s.get("latency_table") else
                 "compiled and measured on the device at the same time."),
              ""]
    lines += _estimators_section(s, fmt)
    if done:
        lines.append("![accuracy vs latency](plots/accuracy_vs_latency.png)")
        lines.append("")
        lines.append("![progress](plots/progress.png)")
        lines.append("")
    if s.get("precisions"):
        lines += _precision_section(s, done, p3, fmt)
    if s.get("layers"):
        prec = bool(s.get("precisions"))  # a precision column where precision was searched
        lines += ["Chosen per layer:", "",
                  "| layer | choice | precision | weights kept |" if prec
                  else "| layer | choice | weights kept |",
                  "| --- | --- | --- | --- |" if prec else "| --- | --- | --- |"]
        lines += [f"| `{la['name']}` ({la['desc'].partition(' (')[2].rstrip(')')}) | "
                  f"{la['choice']} | "
                  + (f"{la.get('precision', 'fp32')} | " if prec else "")
                  + f"{1 / la['ratio']:.0%} |" for la in s["layers"]]
        lines += ["", "![layers](plots/layers.png)", ""]
    top = sorted(meeting, key=lambda r: (-r["accuracy"], r["latency_ms"]))[:8]
    if top:
        lines += ["Best candidates meeting the target:", "",
                  "| id | accuracy | latency | choices |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['id']} | {fmt(r['accuracy'])} | {r['latency_ms']:.3f} ms | "
                  f"{r.get('summary', '')} |" for r in top]
        lines.append("")
    if failed:
        lines += ["Failed candidates:", ""]
        lines += [f"- {r['id']}: {r.get('error')}" for r in failed]
        lines.append("")
    if s.get("targets"):
        lines += _targets_section(s["targets"], fmt)
    if p3:
        lines += ["## Phase 3: pruning algorithm and final training", ""]
        if s.get("targets"):
            lines += [f"For the tightest target, {s['target_ms']:.3f} ms (the others: "
                      f"`final/TARGET/`, the table above).", ""]
        algos = p3.get("algorithms", {})
        if algos:
            lines += ["| algorithm | accuracy after its budget |", "| --- | --- |"]
            lines += [f"| {k} | {fmt(v)} |" for k, v in algos.items()]
            lines += ["", f"Kept **{p3.get('picked')}**; then {p3.get('final_epochs', 0):g} "
                          f"epoch(s) of training with the masks held: accuracy "
                          f"{fmt(p3.get('final_acc'))}."]
        if p3.get("remeasured_ms") is not None:
            lines += ["", f"First measurement {_ms(p3.get('first_ms'))} was over the target; "
                          f"re-measured: {_ms(p3['remeasured_ms'])}."]
        exp = p3.get("exported", {})
        if exp:
            lines += ["", "Exported:", ""]
            lines += [f"- {k}: `{v}`" for k, v in exp.items()]
        if p3.get("layers"):
            lines += ["", "![per-layer latency](plots/per_layer_latency.png)"]
        lines.append("")
    lines += [f"Wall time {s.get('wall_s', 0):.0f} s."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
