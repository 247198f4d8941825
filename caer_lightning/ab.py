"""`caer ab`: a paired A/B test of a config with ReLU (its activations as they are) against CAReLU, over seeds.

    caer ab --config configs/quickstart.yaml --seeds 3 --out ab/quickstart [--trainer.max_epochs 4 ...]

Each (seed, arm) run is its own `caer fit` process with the same seed, so both arms of a seed see the same
batches in the same order; a run that finished is skipped when `caer ab` is re-run with the same --out.
Writes report.md (table), results.json (the same data) and val_acc.png (curves) into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback

from caer_lightning.activation import CAReLU

ARMS = ("relu", "carelu")
CALLBACK = "caer_lightning.CAReLUCallback"
RECORDER = "caer_lightning.ab.RunRecorder"


class RunRecorder(Callback):
    """Writes what `caer ab` compares to `path` (JSON): validation curve, test accuracy, mean train loss per
    epoch, each CAReLU's α and β at every epoch end, step times, peak memory, parameter count, and a
    fingerprint of every training batch (to check the arms saw the same)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.record: dict[str, Any] = {"val_acc": [], "train_loss": [], "carelu": [], "step_seconds": [], "batches": []}
        self._start = 0.0
        self._loss_sum: torch.Tensor | None = None  # on the device: no host sync per step
        self._loss_count = 0

    def on_train_start(self, trainer, pl_module):
        self.record["params"] = sum(p.numel() for p in pl_module.parameters())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.record["batches"].append([round(float(x.double().sum()), 6), int(y.sum())])
        self._start = time.perf_counter()  # after the fingerprint, whose host sync is not the step's cost

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.record["step_seconds"].append(time.perf_counter() - self._start)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1

    def on_train_epoch_end(self, trainer, pl_module):
        if self._loss_count:
            self.record["train_loss"].append(float(self._loss_sum) / self._loss_count)
        self._loss_sum, self._loss_count = None, 0
        self.record["carelu"].append({name: [m.alpha.item(), m.beta.item()]
                                      for name, m in pl_module.named_modules() if isinstance(m, CAReLU)})

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
            self.record["val_acc"].append(float(trainer.callback_metrics["val_acc"]))

    def on_test_end(self, trainer, pl_module):
        if "test_acc" in trainer.callback_metrics:
            self.record["test_acc"] = float(trainer.callback_metrics["test_acc"])
        self._write()

    def on_train_end(self, trainer, pl_module):
        cuda = torch.cuda.is_available()
        self.record["peak_memory_bytes"] = (
            torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        self.record["peak_memory_kind"] = "CUDA allocated" if cuda else "process RSS"
        self._write()

    def _write(self) -> None:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            Path(self.path).write_text(json.dumps(self.record))


def resolved_config(config: str, overrides: list[str]) -> dict:
    """The full `caer fit` configuration for a config file and overrides (as --print_config gives it)."""
    from caer_lightning.cli import build_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recommended to provide both args and command line")
        build_cli(["fit", "--config", config, *overrides, "--print_config"])
    text = out.getvalue()
    if not text.strip():
        raise ValueError(f"could not resolve --config {config} with overrides {overrides}")
    return yaml.safe_load(text)


def arm_config(base: dict, arm: str, seed: int, run_dir: Path, callback_args: dict | None = None) -> dict:
    """`base` for one arm: without any CAReLUCallback (relu) or with one (carelu; the config's own if it has
    one, its init_args updated with `callback_args`), the seed set, logs and checkpoints in `run_dir`, and a
    RunRecorder."""
    config = json.loads(json.dumps(base))
    trainer = config.setdefault("trainer", {})
    callbacks = [c for c in trainer.get("callbacks") or [] if isinstance(c, dict)]
    own = [c for c in callbacks if c.get("class_path") == CALLBACK]
    others = [c for c in callbacks if c.get("class_path") not in (CALLBACK, RECORDER)]
    if arm == "carelu":
        own = own or [{"class_path": CALLBACK}]
        for callback in own:
            callback["init_args"] = {**(callback.get("init_args") or {}), **(callback_args or {})}
        others = own + others
    others.append({"class_path": RECORDER, "init_args": {"path": str(run_dir / "metrics.json")}})
    trainer["callbacks"] = others
    trainer["default_root_dir"] = str(run_dir)
    logger = trainer.get("logger")
    if isinstance(logger, dict) and "save_dir" in logger.get("init_args", {}):
        logger["init_args"]["save_dir"] = str(run_dir)
    config["seed_everything"] = seed
    config["test_after_fit"] = True
    return config


def run_arm(
    base: dict, arm: str, seed: int, out: Path, *, label: str | None = None, callback_args: dict | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Train one arm of one seed in its own process (skipped if it finished before); returns its record.

    `label` names the run (its folder and its "arm" in the record; default `arm`), `callback_args` update the
    CAReLU callback's init_args, `env` is the process environment (default: this one's)."""
    label = label or arm
    run_dir = out / f"seed{seed}" / label
    result_path = run_dir / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result["status"] == "ok":
            return {**result, "skipped": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(arm_config(base, arm, seed, run_dir, callback_args), sort_keys=False))
    log_path = run_dir / "output.log"
    start = time.time()
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, "-m", "caer_lightning.cli", "fit", "--config", str(config_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    metrics_path = run_dir / "metrics.json"
    result: dict[str, Any] = {"seed": seed, "arm": label, "seconds": time.time() - start}
    if done.returncode == 0 and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        result.update(status="ok", **{k: v for k, v in metrics.items() if k != "batches"})
        result["step_seconds_median"] = statistics.median(metrics["step_seconds"])
        result["final_val_acc"] = metrics["val_acc"][-1] if metrics["val_acc"] else None
    else:
        tail = log_path.read_text().strip().splitlines()[-3:]
        result.update(status="failed", error=f"exit code {done.returncode}: " + " | ".join(tail))
    result_path.write_text(json.dumps(result))
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(carelu: list[float], relu: list[float]) -> dict[str, float | None]:
    """Mean of the per-seed differences (CAReLU − ReLU) with a 95% t confidence interval."""
    from scipy import stats

    differences = [c - r for c, r in zip(carelu, relu)]
    if not differences:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(differences)}


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


def markdown(config: str, seeds: int, runs: list[dict], summary: dict) -> str:
    lines = [f"# A/B report: {config}", "",
             f"{seeds} seeds; each seed trains both arms with the same seed and data order. "
             f"Differences are CAReLU − ReLU over the {len(summary['paired_seeds'])} seeds where both arms finished.",
             "", "| | ReLU | CAReLU | CAReLU − ReLU (95% CI) | ratio |", "|---|---|---|---|---|"]
    for metric, label in (("final_val_acc", "final val accuracy"), ("test_acc", "test accuracy")):
        d = summary[f"difference_{metric}"]
        diff = "n/a" if d["mean"] is None else (
            f"{d['mean']:+.4f}" + ("" if d["low"] is None else f" [{d['low']:+.4f}, {d['high']:+.4f}]"))
        lines.append(f"| {label} | {_fmt(summary['relu'][metric])} | {_fmt(summary['carelu'][metric])} | {diff} | |")
    for metric, label, scale, unit in (("step_seconds_median", "step time", 1e3, "ms"),
                                       ("peak_memory_bytes", "peak memory", 2**-20, "MiB")):
        ratio = summary[f"ratio_{metric}"]
        lines.append(f"| {label} ({unit}) | {_fmt(summary['relu'][metric], scale, 1)} | "
                     f"{_fmt(summary['carelu'][metric], scale, 1)} | | {'n/a' if ratio is None else f'{ratio:.3f}'} |")
    params = {arm: "n/a" if not summary[arm]["params"] else f"{summary[arm]['params'][0]:,.0f}" for arm in ARMS}
    added = summary.get("params_added")
    lines.append(f"| parameters | {params['relu']} | {params['carelu']} | {'n/a' if added is None else f'+{added:,.0f}'} | |")
    lines += ["", "| seed | arm | status | final val acc | test acc | step (ms) |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], ARMS.index(r["arm"]))):
        if r["status"] == "ok":
            lines.append(f"| {r['seed']} | {r['arm']} | ok | {r.get('final_val_acc', float('nan')):.4f} | "
                         f"{r.get('test_acc', float('nan')):.4f} | {r['step_seconds_median'] * 1e3:.1f} |")
        else:
            lines.append(f"| {r['seed']} | {r['arm']} | **failed**: {r.get('error', '')[:200]} | | | |")
    return "\n".join(lines) + "\n"


ARM_COLOURS = {"relu": "tab:blue", "carelu": "tab:orange"}


def plot_figure(runs: list[dict]):
    """Validation accuracy per epoch: each seed a thin line, each arm's mean over seeds a thick one, in the
    arm's colour; integer epochs on the x axis."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    epochs_seen = 1
    for arm, colour in ARM_COLOURS.items():
        curves = [r["val_acc"] for r in runs if r["arm"] == arm and r["status"] == "ok" and r.get("val_acc")]
        for curve in curves:
            axes.plot(range(1, len(curve) + 1), curve, color=colour, alpha=0.35, linewidth=0.8)
        if curves:
            length = min(len(c) for c in curves)
            mean = [sum(c[e] for c in curves) / len(curves) for e in range(length)]
            axes.plot(range(1, length + 1), mean, color=colour, linewidth=2.5, marker="o", markersize=4,
                      label=f"{arm}: mean of {len(curves)} seeds")
            epochs_seen = max(epochs_seen, max(len(c) for c in curves))
    axes.set_xticks(range(1, epochs_seen + 1))
    axes.set_xlim(0.5, epochs_seen + 0.5)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_title("ReLU vs CAReLU: validation accuracy (thin: one seed; thick: mean)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    return figure


def plot(runs: list[dict], path: Path) -> None:
    plot_figure(runs).savefig(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="caer ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a caer/LightningCLI fit config")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ..., N-1); default 3")
    parser.add_argument("--out", default="ab", help="output folder; re-running with it skips finished runs")
    args, overrides = parser.parse_known_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds}: accepted values: an int >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = resolved_config(args.config, overrides)
    runs = []
    total = 2 * args.seeds
    for seed in range(args.seeds):
        for arm in ARMS:
            index = len(runs) + 1
            print(f"[{index}/{total}] seed {seed}, {arm}: ", end="", flush=True)
            result = run_arm(base, arm, seed, out)
            runs.append(result)
            if result.get("skipped"):
                print("already finished, skipped", flush=True)
            elif result["status"] == "ok":
                print(f"done in {result['seconds']:.0f} s, val_acc {result.get('final_val_acc', float('nan')):.4f}", flush=True)
            else:
                print(f"FAILED ({result['error'][:200]}); see {out / f'seed{seed}' / arm / 'output.log'}", flush=True)
    summary = summarize(runs)
    results = {"config": args.config, "overrides": overrides, "seeds": args.seeds, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(markdown(args.config, args.seeds, runs, summary))
    plot(runs, out / "val_acc.png")
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'val_acc.png'}")
    return results
