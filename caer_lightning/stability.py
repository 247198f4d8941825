"""`caer stability`: train one config over many seeds as ReLU and as CAReLU in several settings, and count the
runs that diverge.

    caer stability --config configs/quickstart.yaml --seeds 8 --jobs 2 --out stability/sgd
    caer stability --config configs/quickstart.yaml --seeds 8 --out stability/adamw \\
        --model.init_args.optimizer=torch.optim.AdamW --model.init_args.optimizer.init_args.lr=1e-3

Arms (`--arms`): `relu` (every CAReLUCallback removed), `carelu` (the config's callback as it is, i.e. at the
defaults unless the config sets them), and `carelu:KEY=VALUE,...` (the callback with init_args changed, e.g.
`carelu:lr_scale=1.0`). Default: relu, carelu, carelu:lr_scale=1.0. Arguments it does not know go to
LightningCLI as overrides of the config. Each run is its own `caer fit` process (as in `caer ab`, whose run
folders, records and resume it shares): re-run with the same --out, a run that finished with the same
configuration is reused (and said so); a folder holding another experiment's run stops the sweep before any
training. Exits non-zero when a run failed.

A run counts as diverged when it
  - failed, or ended with a non-finite train loss, alpha or beta;
  - had an epoch whose mean train loss was more than twice that of its first epoch; or
  - tested more than 5 points under the ReLU run of the same seed.
Prints a Markdown table (also written to --out/stability.md, with the data in --out/stability.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from caer_lightning.guards import SATURATION_LIMIT
from caer_lightning.runner import (
    RunMismatch, baseline_activation, baseline_title, carelu_title, resolved_config, reusable_run, run_arm,
)

DEFAULT_ARMS = ("relu", "carelu", "carelu:lr_scale=1.0")
LOSS_RISE = 2.0  # an epoch's mean train loss above this multiple of the first epoch's: diverged
ACCURACY_DROP = 0.05  # test accuracy this far under the same-seed ReLU run: diverged


def parse_arm(spec: str) -> tuple[str, dict]:
    """"relu", "carelu" or "carelu:KEY=VALUE,..." -> (arm, callback init_args)."""
    arm, _, settings = spec.partition(":")
    if arm not in ("relu", "carelu") or (arm == "relu" and settings):
        raise ValueError(f"--arms entry {spec!r}: accepted values: relu, carelu, carelu:KEY=VALUE[,KEY=VALUE...]")
    args = {}
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--arms entry {spec!r}: {item!r} is not KEY=VALUE")
        args[key.strip()] = yaml.safe_load(value)
    return arm, args


def label_of(spec: str) -> str:
    return spec.replace(":", "-").replace(",", "-")


def largest_saturation(layers: dict[str, list[float]]) -> float:
    """max over layers of max over p in [0, 1] of |alpha·p + beta| (reached at p = 0 or p = 1)."""
    return max((max(abs(b), abs(a + b)) for a, b in layers.values()), default=0.0)


def divergence(run: dict, relu: dict | None, baseline: str = "ReLU") -> list[str]:
    """The reasons a run counts as diverged (empty: it did not); `relu` is the same seed's run without the
    callback, `baseline` the activation it kept."""
    if run["status"] != "ok":
        return ["failed"]
    reasons = []
    final = run["carelu"][-1] if run.get("carelu") else {}
    values = run.get("train_loss", []) + [v for ab in final.values() for v in ab]
    if not all(math.isfinite(v) for v in values):
        reasons.append("non-finite")
    losses = run.get("train_loss", [])
    if losses and any(loss > LOSS_RISE * losses[0] for loss in losses[1:]):
        reasons.append(f"train loss > {LOSS_RISE:g}x epoch 1")
    if relu is not None and relu["status"] == "ok" and run.get("test_acc") is not None:
        if run["test_acc"] < relu["test_acc"] - ACCURACY_DROP:
            reasons.append(f"test acc {run['test_acc']:.3f} < {baseline} {relu['test_acc']:.3f} - {ACCURACY_DROP:g}")
    return reasons


def summarize(specs: list[str], runs: list[dict], baseline: str = "ReLU") -> list[dict]:
    """One row per arm: accuracy over seeds, paired difference to the no-callback arm, largest α and β, runs
    saturated and diverged (`baseline`: the activation the no-callback arm kept, for the reasons' wording)."""
    relu = {r["seed"]: r for r in runs if r["arm"] == "relu"}
    rows = []
    for spec in specs:
        arm_runs = [r for r in runs if r["arm"] == label_of(spec)]
        ok = [r for r in arm_runs if r["status"] == "ok" and r.get("test_acc") is not None]
        accuracies = [r["test_acc"] for r in ok]
        finals = [r["carelu"][-1] for r in ok if r.get("carelu")]
        diverged = {r["seed"]: divergence(r, None if spec == "relu" else relu.get(r["seed"]), baseline) for r in arm_runs}
        paired = [r["test_acc"] - relu[r["seed"]]["test_acc"] for r in ok
                  if r["seed"] in relu and relu[r["seed"]].get("test_acc") is not None]
        rows.append({
            "arm": spec, "runs": len(arm_runs), "finished": len(ok),
            "test_acc_mean": statistics.fmean(accuracies) if accuracies else None,
            "test_acc_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "test_acc_min": min(accuracies, default=None),
            "difference_to_relu": statistics.fmean(paired) if paired and spec != "relu" else None,
            "max_abs_alpha": max((abs(a) for f in finals for a, _ in f.values()), default=None),
            "max_abs_beta": max((abs(b) for f in finals for _, b in f.values()), default=None),
            "runs_saturated": sum(largest_saturation(f) > SATURATION_LIMIT for f in finals),
            "diverged": {seed: reasons for seed, reasons in diverged.items() if reasons},
        })
    return rows


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], seeds: int, titles: dict[str, str] | None = None, baseline: str = "ReLU") -> str:
    """The table README shows: one row per arm, named by `titles` (arm spec -> title; default the spec)."""
    titles = titles or {}
    lines = [f"| arm | test acc (mean ± std) | min | Δ vs {baseline} (paired mean) | largest \\|β\\| | largest \\|α\\| | "
             f"runs with a saturated layer | diverged (of {seeds}) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        is_relu = row["arm"] == "relu"
        accuracy = "–" if row["test_acc_mean"] is None else f"{row['test_acc_mean']:.3f} ± {row['test_acc_std']:.3f}"
        difference = "–" if row["difference_to_relu"] is None else f"{row['difference_to_relu']:+.3f}"
        diverged = len(row["diverged"])
        seeds_list = f" (seeds {', '.join(map(str, sorted(row['diverged'])))})" if diverged else ""
        lines.append(
            f"| {titles.get(row['arm'], row['arm'])} | {accuracy} | {_number(row['test_acc_min'])} | {difference} | "
            f"{'–' if is_relu else _number(row['max_abs_beta'], 2)} | {'–' if is_relu else _number(row['max_abs_alpha'], 2)} | "
            f"{'–' if is_relu else row['runs_saturated']} | {diverged}{seeds_list} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="caer stability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a caer/LightningCLI fit config")
    parser.add_argument("--seeds", type=int, default=8, help="number of seeds (0, 1, ..., N-1); default 8")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help=f"default: {' '.join(DEFAULT_ARMS)}")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--out", default="stability", help="output folder; re-running with it reuses the runs that "
                        "finished with the same configuration, and stops if it holds another experiment's")
    args, overrides = parser.parse_known_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs: accepted values: an int >= 1")
    arms = {spec: parse_arm(spec) for spec in args.arms}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = resolved_config(args.config, overrides)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def run(job: tuple[int, str]) -> dict:
        seed, spec = job
        arm, callback_args = arms[spec]
        result = run_arm(base, arm, seed, out, label=label_of(spec), callback_args=callback_args, env=env)
        said = f"reused from {result['reused_from']}" if result.get("skipped") else result["status"]
        reason = f" ({result['error']}; see {result['log']})" if result["status"] != "ok" else ""
        print(f"seed {seed}, {spec}: {said}, test acc {result.get('test_acc', float('nan')):.3f}{reason}", flush=True)
        return result

    jobs = [(seed, spec) for seed in range(args.seeds) for spec in args.arms]
    try:  # before any training: a folder holding another experiment's run stops the whole sweep
        for seed, spec in jobs:
            arm, callback_args = arms[spec]
            reusable_run(base, arm, seed, out, label=label_of(spec), callback_args=callback_args)
    except RunMismatch as error:
        raise SystemExit(f"caer stability: {error}") from None
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run, jobs))
    baseline = baseline_activation(base)
    titles = {spec: baseline_title(base) if arm == "relu" else carelu_title(base, callback_args)
              for spec, (arm, callback_args) in arms.items()}
    rows = summarize(args.arms, runs, baseline)
    for row in rows:
        row["title"] = titles[row["arm"]]
    table = markdown(rows, args.seeds, titles, baseline)
    command = shlex.join(["caer", "stability", *(argv if argv is not None else sys.argv[1:])])
    (out / "stability.md").write_text(f"`{command}`\n\n{table}")
    (out / "stability.json").write_text(json.dumps({"command": command, "rows": rows, "runs": runs}, indent=2))
    print(table)
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"caer stability: {len(failed)} of {len(runs)} runs failed (counted as diverged in the "
                         "table; their reasons and logs are printed above)")
    return rows
