"""`caer ab`: a paired A/B test of a config with ReLU (its activations as they are) against CAReLU, over seeds.

    caer ab --config configs/quickstart.yaml --seeds 3 --out ab/quickstart [--trainer.max_epochs 4 ...]

Each (seed, arm) run is its own `caer fit` process with the same seed, so both arms of a seed see the same
batches in the same order; re-run with the same --out, a run that finished with the same configuration is
reused (and said so), and a folder holding another experiment's run stops `caer ab` before any training.
Exits non-zero when a run failed.

The metric compared: `--metric` (a validation metric's name, with `--mode max` or `min`: whether higher or
lower is better), else the one the config's ModelCheckpoint monitors (with its mode), else val_acc (max). It is
reported at the last epoch and, under its test name (val_psnr -> test_psnr), on the tested weights; every other
test metric the runs logged gets a row too.
Writes report.md (tables), results.json (the same data) and <metric>.png (validation curves, e.g. val_acc.png)
into --out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import warnings
from dataclasses import asdict, dataclass
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
    checkpoint_monitor,
    resolved_config,
    reusable_run,
    run_arm,
    tested_weights,
)

ARMS = ("relu", "carelu")
MODES = ("max", "min")
LABELS = {"val_acc": "val accuracy", "test_acc": "test accuracy"}  # the classifiers' metrics, in words


@dataclass(frozen=True)
class Metric:
    """What `caer ab` compares: a validation metric `val` (logged each epoch), its test counterpart `test`, whether
    higher or lower is better (`mode`), and where the choice came from (`source`)."""

    val: str = "val_acc"
    mode: str = "max"
    source: str = "the default"

    @property
    def test(self) -> str:
        return "test" + self.val[len("val"):]

    @property
    def better(self) -> str:
        return "higher" if self.mode == "max" else "lower"


def choose_metric(base: dict, metric: str | None = None, mode: str | None = None) -> Metric:
    """The metric to compare: `metric` and `mode` when given (`mode` may be left out when the config's
    ModelCheckpoint monitors that metric), else the config's ModelCheckpoint's monitor and mode, else val_acc
    (max). Raises ValueError naming the option and the accepted values."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"--mode={mode!r}: accepted values: {', '.join(MODES)}")
    monitored = checkpoint_monitor(base)
    if metric is None:
        if mode is not None:
            raise ValueError(f"--mode={mode!r} without --metric: give the metric it applies to (--metric val_...)")
        if monitored is None:
            return Metric()
        metric, mode = monitored
        source = "the config's ModelCheckpoint"
    else:
        source = "--metric"
        if mode is None:
            if monitored is None or monitored[0] != metric:
                raise ValueError(f"--metric={metric!r} needs --mode: accepted values: max (higher is better), "
                                 "min (lower is better)")
            mode = monitored[1]
    if not metric.startswith("val") or mode not in MODES:
        raise ValueError(f"{'--metric' if source == '--metric' else 'the ModelCheckpoint monitor'}={metric!r}, "
                         f"mode={mode!r}: accepted values: a validation metric whose name starts with 'val' (its test "
                         f"counterpart starts with 'test': val_psnr -> test_psnr), mode {' or '.join(MODES)}")
    return Metric(metric, mode, source)


def label(name: str) -> str:
    return LABELS.get(name, name)


def curve(run: dict, metric: Metric) -> list[float]:
    """The run's validation curve of `metric` (records written before val_metrics existed: val_acc only)."""
    if "val_metrics" in run:
        return [epoch[metric.val] for epoch in run["val_metrics"] if metric.val in epoch]
    return list(run.get(metric.val) or [])


def tested_value(run: dict, name: str) -> float | None:
    """The run's test metric `name` (records written before test_metrics existed: test_acc only), or None."""
    if "test_metrics" in run:
        return run["test_metrics"].get(name)
    return run.get(name)


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


def summarize(runs: list[dict], metric: Metric = Metric()) -> dict:
    """Per-arm means, paired differences over the seeds where both arms finished, and cost ratios. `metric` at the
    last epoch (`final_<val>`) and on the tested weights (`<test>`); every other test metric under `other_test`."""
    ok = {arm: {r["seed"]: r for r in runs if r["arm"] == arm and r["status"] == "ok"} for arm in ARMS}
    paired = sorted(set(ok["relu"]) & set(ok["carelu"]))
    summary: dict[str, Any] = {"metric": {**asdict(metric), "test": metric.test}, "paired_seeds": paired, "failed": [
        {"seed": r["seed"], "arm": r["arm"], "error": r.get("error")} for r in runs if r["status"] != "ok"]}
    final, test = f"final_{metric.val}", metric.test
    values = {arm: {s: {final: (curve(r, metric) or [None])[-1], test: tested_value(r, test),
                        **{m: r.get(m) for m in ("step_seconds_median", "peak_memory_bytes", "params")}}
                    for s, r in ok[arm].items()} for arm in ARMS}
    for arm in ARMS:
        summary[arm] = {"runs": len(ok[arm])}
        for name in (final, test, "step_seconds_median", "peak_memory_bytes", "params"):
            found = [v[name] for v in values[arm].values() if v[name] is not None]
            summary[arm][name] = mean_std(found) if found else None
    for name in (final, test):
        both = [s for s in paired if values["carelu"][s][name] is not None and values["relu"][s][name] is not None]
        summary[f"difference_{name}"] = paired_difference(
            [values["carelu"][s][name] for s in both], [values["relu"][s][name] for s in both])
    others = sorted({name for arm in ARMS for r in ok[arm].values() for name in r.get("test_metrics", {})} - {test})
    summary["other_test"] = {}
    for name in others:
        per_arm = {arm: {s: tested_value(r, name) for s, r in ok[arm].items() if tested_value(r, name) is not None}
                   for arm in ARMS}
        both = [s for s in paired if s in per_arm["relu"] and s in per_arm["carelu"]]
        summary["other_test"][name] = {
            **{arm: mean_std(list(per_arm[arm].values())) if per_arm[arm] else None for arm in ARMS},
            "difference": paired_difference([per_arm["carelu"][s] for s in both], [per_arm["relu"][s] for s in both]),
        }
    for name in ("step_seconds_median", "peak_memory_bytes"):
        relu, carelu = summary["relu"][name], summary["carelu"][name]
        summary[f"ratio_{name}"] = carelu[0] / relu[0] if relu and carelu and relu[0] else None
    if summary["relu"]["params"] and summary["carelu"]["params"]:
        summary["params_added"] = summary["carelu"]["params"][0] - summary["relu"]["params"][0]
    return summary


def verdict(difference: dict, metric: Metric, baseline: str) -> str:
    """One sentence on the paired test difference, worded by whether higher or lower is better."""
    if difference["low"] is None:
        return f"Fewer than 2 paired seeds: no interval for {metric.test}."
    favourable = difference["low"] > 0 if metric.mode == "max" else difference["high"] < 0
    unfavourable = difference["high"] < 0 if metric.mode == "max" else difference["low"] > 0
    seeds = f"over {difference['n']} paired seeds"
    if favourable:
        return f"On {metric.test} CAReLU is better than {baseline} {seeds}: the 95% interval excludes zero."
    if unfavourable:
        return f"On {metric.test} CAReLU is worse than {baseline} {seeds}: the 95% interval excludes zero."
    return f"On {metric.test} the 95% interval straddles zero {seeds}: no difference shown between CAReLU and {baseline}."


def _fmt(pair, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if not pair else f"{pair[0] * scale:.{digits}f} ± {pair[1] * scale:.{digits}f}"


def memory_kind(runs: list[dict]) -> str:
    """What "peak memory" measured in these runs ("process RSS" on CPU, "CUDA allocated" on a GPU)."""
    kinds = sorted({r["peak_memory_kind"] for r in runs if r.get("peak_memory_kind")})
    return " / ".join(kinds) if kinds else "peak"


def _difference(d: dict) -> str:
    if d["mean"] is None:
        return "n/a"
    return f"{d['mean']:+.4f}" + ("" if d["low"] is None else f" [{d['low']:+.4f}, {d['high']:+.4f}]")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(config: str, seeds: int, runs: list[dict], summary: dict, base: dict | None = None,
             metric: Metric = Metric()) -> str:
    """report.md: per-arm means of `metric`, the paired difference with its interval and what it says, costs, the
    other test metrics, and every run. `base` (the resolved configuration) names the arms and the weights tested."""
    base = base or {}
    relu = baseline_activation(base)
    sign = "positive" if metric.mode == "max" else "negative"
    final, test = f"final_{metric.val}", metric.test
    lines = [f"# A/B report: {config}", "",
             f"{seeds} seeds; each seed trains both arms with the same seed and data order: "
             f"{baseline_title(base)} and {carelu_title(base)}. "
             f"Differences are CAReLU − {relu} over the {len(summary['paired_seeds'])} seeds where both arms finished.",
             "", f"Metric: {metric.val} (from {metric.source}), tested as {test}; {metric.better} is better, so a "
             f"{sign} difference favours CAReLU. {verdict(summary[f'difference_{test}'], metric, relu)}",
             "", f"| | {relu} | CAReLU | CAReLU − {relu} (95% CI) | ratio |", "|---|---|---|---|---|"]
    for name, title in ((final, f"final {label(metric.val)}"), (test, f"{label(test)} ({tested_weights(base)})")):
        lines.append(f"| {title} | {_fmt(summary['relu'][name])} | {_fmt(summary['carelu'][name])} | "
                     f"{_difference(summary[f'difference_{name}'])} | |")
    for name, title, scale, unit in (("step_seconds_median", "step time", 1e3, "ms"),
                                     ("peak_memory_bytes", "peak memory", 2**-20, f"{memory_kind(runs)}, MiB")):
        ratio = summary[f"ratio_{name}"]
        lines.append(f"| {title} ({unit}) | {_fmt(summary['relu'][name], scale, 1)} | "
                     f"{_fmt(summary['carelu'][name], scale, 1)} | | {'n/a' if ratio is None else f'{ratio:.3f}'} |")
    params = {arm: "n/a" if not summary[arm]["params"] else f"{summary[arm]['params'][0]:,.0f}" for arm in ARMS}
    added = summary.get("params_added")
    lines.append(f"| parameters | {params['relu']} | {params['carelu']} | {'n/a' if added is None else f'+{added:,.0f}'} | |")
    if summary.get("other_test"):
        lines += ["", f"Other test metrics ({tested_weights(base)}):", "",
                  f"| | {relu} | CAReLU | CAReLU − {relu} (95% CI) |", "|---|---|---|---|"]
        for name, row in summary["other_test"].items():
            lines.append(f"| {label(name)} | {_fmt(row['relu'])} | {_fmt(row['carelu'])} | "
                         f"{_difference(row['difference'])} |")
    names = {"relu": relu, "carelu": "CAReLU"}
    lines += ["", f"| seed | arm | status | final {metric.val} | {test} | step (ms) |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], ARMS.index(r["arm"]))):
        if r["status"] == "ok":
            lines.append(f"| {r['seed']} | {names[r['arm']]} | ok | {_number((curve(r, metric) or [None])[-1])} | "
                         f"{_number(tested_value(r, test))} | {r['step_seconds_median'] * 1e3:.1f} |")
        else:
            error = r.get("error", "").replace("|", "\\|")
            lines.append(f"| {r['seed']} | {names[r['arm']]} | **failed**: {error} | | | |")
    return "\n".join(lines) + "\n"


ARM_COLOURS = {"relu": "tab:blue", "carelu": "tab:orange"}


def plot_figure(runs: list[dict], baseline: str = "ReLU", metric: Metric = Metric()):
    """The validation metric per epoch: each seed a thin line, each arm's mean over seeds a thick one, in the
    arm's colour; integer epochs on the x axis. `baseline` names the arm without the callback."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    epochs_seen = 1
    names = {"relu": baseline, "carelu": "CAReLU"}
    for arm, colour in ARM_COLOURS.items():
        curves = [c for r in runs if r["arm"] == arm and r["status"] == "ok" for c in [curve(r, metric)] if c]
        for values in curves:
            axes.plot(range(1, len(values) + 1), values, color=colour, alpha=0.35, linewidth=0.8)
        if curves:
            length = min(len(c) for c in curves)
            mean = [sum(c[e] for c in curves) / len(curves) for e in range(length)]
            axes.plot(range(1, length + 1), mean, color=colour, linewidth=2.5, marker="o", markersize=4,
                      label=f"{names[arm]}: mean of {len(curves)} seeds")
            epochs_seen = max(epochs_seen, max(len(c) for c in curves))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlim(0.5, epochs_seen + 0.5)
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{label(metric.val)} ({metric.better} is better)")
    axes.set_title(f"{baseline} vs CAReLU: {label(metric.val)} (thin: one seed; thick: mean)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    return figure


def plot_name(metric: Metric) -> str:
    """The curves' file name: the validation metric's name as a file name (`val_acc.png`, `val_psnr.png`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric.val) + ".png"


def plot(runs: list[dict], path: Path, baseline: str = "ReLU", metric: Metric = Metric()) -> None:
    plot_figure(runs, baseline, metric).savefig(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="caer ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a caer/LightningCLI fit config")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ..., N-1); default 3")
    parser.add_argument("--out", default="ab", help="output folder; re-running with it reuses the runs that finished "
                        "with the same configuration, and stops if it holds another experiment's")
    parser.add_argument("--metric", help="the validation metric to compare (e.g. val_psnr; its test counterpart, "
                        "test_psnr, is compared on the tested weights); default: the one the config's ModelCheckpoint "
                        "monitors, else val_acc")
    parser.add_argument("--mode", help="max (higher is better) or min (lower is better); needed with --metric unless "
                        "the config's ModelCheckpoint monitors that metric")
    args, overrides = parser.parse_known_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds}: accepted values: an int >= 1")
    base = resolved_config(args.config, overrides)
    try:
        metric = choose_metric(base, args.metric, args.mode)
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
            print(f"done in {result['seconds']:.0f} s, {metric.val} {_number((curve(result, metric) or [None])[-1])}",
                  flush=True)
        else:
            print(f"FAILED: {result['error']}\n    see {result['log']}", flush=True)
        if result["status"] == "ok" and result.get("val_metrics") and not curve(result, metric):
            logged = sorted({name for epoch in result.get("val_metrics", []) for name in epoch})
            raise SystemExit(f"caer ab: the run in {out / f'seed{seed}' / arm} logged no {metric.val} (the metric from "
                             f"{metric.source}); it logged {', '.join(logged)}: pass one of those with --metric and "
                             "--mode")
    summary = summarize(runs, metric)
    results = {"config": args.config, "overrides": overrides, "seeds": args.seeds, "runs": runs, "summary": summary}
    curves = out / plot_name(metric)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(markdown(args.config, args.seeds, runs, summary, base, metric))
    plot(runs, curves, baseline_activation(base), metric)
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'results.json'}, {curves}")
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"caer ab: {len(failed)} of {len(runs)} runs failed (their logs are named above); "
                         "the report compares only the seeds where both arms finished")
    return results
