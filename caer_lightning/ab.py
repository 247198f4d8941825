"""`caer ab`: a paired A/B test of a config with ReLU (its activations as they are) against CAReLU, over seeds.

    caer ab --config configs/quickstart.yaml --seeds 3 --out ab/quickstart [--trainer.max_epochs 4 ...]

Each (seed, arm) run is its own `caer fit` process with the same seed, so both arms of a seed see the same
batches in the same order; re-run with the same --out, a run that finished with the same configuration is
reused (and said so), and a folder holding another experiment's run stops `caer ab` before any training.
Exits non-zero when a run failed.
Writes report.md (table), results.json (the same data) and val_acc.png (curves) into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

# RunRecorder is not used here: it is imported so that `caer_lightning.ab.RunRecorder`, the class_path in the
# configs of run folders written before it moved to runner.py, still loads.
from caer_lightning.runner import (  # noqa: F401 - RunRecorder: old run folders' configs name it here
    RunMismatch,
    RunRecorder,
    baseline_activation,
    baseline_title,
    carelu_title,
    resolved_config,
    reusable_run,
    run_arm,
    tested_weights,
)

ARMS = ("relu", "carelu")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(carelu: list[float], relu: list[float]) -> dict[str, float | None]:
    """Mean of the per-seed differences (CAReLU − ReLU) with the 95% paired t confidence interval (scipy's)."""
    from scipy import stats

    n = min(len(carelu), len(relu))  # the seeds paired: carelu[i] with relu[i]
    carelu, relu = list(carelu)[:n], list(relu)[:n]
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = statistics.fmean(c - r for c, r in zip(carelu, relu))
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    with warnings.catch_warnings():  # differences (nearly) all equal: scipy warns, and the interval is the mean
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation")
        interval = stats.ttest_rel(carelu, relu).confidence_interval(0.95)
    return {"mean": mean, "low": float(interval.low), "high": float(interval.high), "n": n}


def summarize(runs: list[dict]) -> dict:
    """Per-arm means, paired differences over the seeds where both arms finished, and cost ratios."""
    ok = {arm: {r["seed"]: r for r in runs if r["arm"] == arm and r["status"] == "ok"} for arm in ARMS}
    paired = sorted(set(ok["relu"]) & set(ok["carelu"]))
    summary: dict[str, Any] = {"paired_seeds": paired, "failed": [
        {"seed": r["seed"], "arm": r["arm"], "error": r.get("error")} for r in runs if r["status"] != "ok"]}
    for arm in ARMS:
        finished = list(ok[arm].values())
        summary[arm] = {"runs": len(finished)}
        for metric in ("final_val_acc", "test_acc", "step_seconds_median", "peak_memory_bytes", "params"):
            values = [r[metric] for r in finished if r.get(metric) is not None]
            summary[arm][metric] = mean_std(values) if values else None
    for metric in ("final_val_acc", "test_acc"):
        summary[f"difference_{metric}"] = paired_difference(
            [ok["carelu"][s][metric] for s in paired], [ok["relu"][s][metric] for s in paired])
    for metric in ("step_seconds_median", "peak_memory_bytes"):
        relu, carelu = summary["relu"][metric], summary["carelu"][metric]
        summary[f"ratio_{metric}"] = carelu[0] / relu[0] if relu and carelu and relu[0] else None
    if summary["relu"]["params"] and summary["carelu"]["params"]:
        summary["params_added"] = summary["carelu"]["params"][0] - summary["relu"]["params"][0]
    return summary


def _fmt(pair, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if not pair else f"{pair[0] * scale:.{digits}f} ± {pair[1] * scale:.{digits}f}"


def memory_kind(runs: list[dict]) -> str:
    """What "peak memory" measured in these runs ("process RSS" on CPU, "CUDA allocated" on a GPU)."""
    kinds = sorted({r["peak_memory_kind"] for r in runs if r.get("peak_memory_kind")})
    return " / ".join(kinds) if kinds else "peak"


def markdown(config: str, seeds: int, runs: list[dict], summary: dict, base: dict | None = None) -> str:
    """report.md: per-arm means, the paired difference with its interval, costs, and every run. `base` (the
    resolved configuration) names the arms and the weights tested."""
    base = base or {}
    relu = baseline_activation(base)
    lines = [f"# A/B report: {config}", "",
             f"{seeds} seeds; each seed trains both arms with the same seed and data order: "
             f"{baseline_title(base)} and {carelu_title(base)}. "
             f"Differences are CAReLU − {relu} over the {len(summary['paired_seeds'])} seeds where both arms finished.",
             "", f"| | {relu} | CAReLU | CAReLU − {relu} (95% CI) | ratio |", "|---|---|---|---|---|"]
    for metric, label in (("final_val_acc", "final val accuracy"),
                          ("test_acc", f"test accuracy ({tested_weights(base)})")):
        d = summary[f"difference_{metric}"]
        diff = "n/a" if d["mean"] is None else (
            f"{d['mean']:+.4f}" + ("" if d["low"] is None else f" [{d['low']:+.4f}, {d['high']:+.4f}]"))
        lines.append(f"| {label} | {_fmt(summary['relu'][metric])} | {_fmt(summary['carelu'][metric])} | {diff} | |")
    for metric, label, scale, unit in (("step_seconds_median", "step time", 1e3, "ms"),
                                       ("peak_memory_bytes", "peak memory", 2**-20, f"{memory_kind(runs)}, MiB")):
        ratio = summary[f"ratio_{metric}"]
        lines.append(f"| {label} ({unit}) | {_fmt(summary['relu'][metric], scale, 1)} | "
                     f"{_fmt(summary['carelu'][metric], scale, 1)} | | {'n/a' if ratio is None else f'{ratio:.3f}'} |")
    params = {arm: "n/a" if not summary[arm]["params"] else f"{summary[arm]['params'][0]:,.0f}" for arm in ARMS}
    added = summary.get("params_added")
    lines.append(f"| parameters | {params['relu']} | {params['carelu']} | {'n/a' if added is None else f'+{added:,.0f}'} | |")
    names = {"relu": relu, "carelu": "CAReLU"}
    lines += ["", "| seed | arm | status | final val acc | test acc | step (ms) |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], ARMS.index(r["arm"]))):
        if r["status"] == "ok":
            lines.append(f"| {r['seed']} | {names[r['arm']]} | ok | {r.get('final_val_acc', float('nan')):.4f} | "
                         f"{r.get('test_acc', float('nan')):.4f} | {r['step_seconds_median'] * 1e3:.1f} |")
        else:
            error = r.get("error", "").replace("|", "\\|")
            lines.append(f"| {r['seed']} | {names[r['arm']]} | **failed**: {error} | | | |")
    return "\n".join(lines) + "\n"


ARM_COLOURS = {"relu": "tab:blue", "carelu": "tab:orange"}


def plot_figure(runs: list[dict], baseline: str = "ReLU"):
    """Validation accuracy per epoch: each seed a thin line, each arm's mean over seeds a thick one, in the
    arm's colour; integer epochs on the x axis. `baseline` names the arm without the callback."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    epochs_seen = 1
    names = {"relu": baseline, "carelu": "CAReLU"}
    for arm, colour in ARM_COLOURS.items():
        curves = [r["val_acc"] for r in runs if r["arm"] == arm and r["status"] == "ok" and r.get("val_acc")]
        for curve in curves:
            axes.plot(range(1, len(curve) + 1), curve, color=colour, alpha=0.35, linewidth=0.8)
        if curves:
            length = min(len(c) for c in curves)
            mean = [sum(c[e] for c in curves) / len(curves) for e in range(length)]
            axes.plot(range(1, length + 1), mean, color=colour, linewidth=2.5, marker="o", markersize=4,
                      label=f"{names[arm]}: mean of {len(curves)} seeds")
            epochs_seen = max(epochs_seen, max(len(c) for c in curves))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlim(0.5, epochs_seen + 0.5)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"{baseline} vs CAReLU: validation accuracy (thin: one seed; thick: mean)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    return figure


def plot(runs: list[dict], path: Path, baseline: str = "ReLU") -> None:
    plot_figure(runs, baseline).savefig(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="caer ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a caer/LightningCLI fit config")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ..., N-1); default 3")
    parser.add_argument("--out", default="ab", help="output folder; re-running with it reuses the runs that finished "
                        "with the same configuration, and stops if it holds another experiment's")
    args, overrides = parser.parse_known_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds}: accepted values: an int >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = resolved_config(args.config, overrides)
    jobs = [(seed, arm) for seed in range(args.seeds) for arm in ARMS]
    try:  # before any training: a folder holding another experiment's run stops the whole A/B test
        for seed, arm in jobs:
            reusable_run(base, arm, seed, out)
    except RunMismatch as error:
        raise SystemExit(f"caer ab: {error}") from None
    runs = []
    for index, (seed, arm) in enumerate(jobs, start=1):
        title = baseline_title(base) if arm == "relu" else carelu_title(base)
        print(f"[{index}/{len(jobs)}] seed {seed}, {title}: ", end="", flush=True)
        result = run_arm(base, arm, seed, out)
        runs.append(result)
        if result.get("skipped"):
            print(f"reused from {result['reused_from']} (the same configuration, finished before)", flush=True)
        elif result["status"] == "ok":
            print(f"done in {result['seconds']:.0f} s, val_acc {result.get('final_val_acc', float('nan')):.4f}", flush=True)
        else:
            print(f"FAILED: {result['error']}\n    see {result['log']}", flush=True)
    summary = summarize(runs)
    results = {"config": args.config, "overrides": overrides, "seeds": args.seeds, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(markdown(args.config, args.seeds, runs, summary, base))
    plot(runs, out / "val_acc.png", baseline_activation(base))
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'val_acc.png'}")
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"caer ab: {len(failed)} of {len(runs)} runs failed (their logs are named above); "
                         "the report compares only the seeds where both arms finished")
    return results
