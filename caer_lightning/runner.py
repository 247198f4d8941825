"""What `caer fit`, `caer ab` and `caer stability` share: a run's resolved configuration, its per-arm variant,
the callback that records it, and running it as its own `caer fit` process.

It imports lightning_cli (the CLI itself), never cli.py, ab.py or stability.py, which import it.
"""

from __future__ import annotations

import inspect
import json
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
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser
from torch.nn.parameter import is_lazy

from caer_lightning import __version__
from caer_lightning.activation import CAReLU
from caer_lightning.callbacks.carelu import CAReLUCallback
from caer_lightning.lightning_cli import CAReLUCLI, build_cli

CALLBACK = "caer_lightning.CAReLUCallback"
RECORDER = "caer_lightning.runner.RunRecorder"
OLD_RECORDER = "caer_lightning.ab.RunRecorder"  # in the configs of run folders written before runner.py


class RunRecorder(Callback):
    """Writes what `caer ab` compares to `path` (JSON): every validation metric at each epoch end (`val_metrics`,
    with the accuracy curve also as `val_acc`), every test metric (`test_metrics`, the accuracy also as
    `test_acc`), mean train loss per epoch, each CAReLU's α and β at every epoch end, step times, peak memory,
    parameter count, and a fingerprint of every training batch (to check the arms saw the same)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.record: dict[str, Any] = {"val_acc": [], "val_metrics": [], "test_metrics": {}, "train_loss": [],
                                       "carelu": [], "step_seconds": [], "batches": []}
        self._start = 0.0
        self._loss_sum: torch.Tensor | None = None  # on the device: no host sync per step
        self._loss_count = 0

    def on_train_start(self, trainer, pl_module):
        self.record["params"] = _parameter_count(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch[0], batch[1]
        target = round(float(y.double().sum()), 6) if y.is_floating_point() else int(y.sum())  # images, or labels
        self.record["batches"].append([round(float(x.double().sum()), 6), target])
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
        # α, β per layer (their means over the channels for per-channel layers; left out before they exist)
        self.record["carelu"].append({name: [m.alpha.mean().item(), m.beta.mean().item()]
                                      for name, m in pl_module.named_modules()
                                      if isinstance(m, CAReLU) and not m.has_uninitialized_params()})

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.record["val_metrics"].append(stage_metrics(trainer, "val"))
        if "val_acc" in trainer.callback_metrics:
            self.record["val_acc"].append(float(trainer.callback_metrics["val_acc"]))

    def on_test_end(self, trainer, pl_module):
        self.record["test_metrics"] = stage_metrics(trainer, "test")
        if "test_acc" in trainer.callback_metrics:
            self.record["test_acc"] = float(trainer.callback_metrics["test_acc"])
        self._write()

    def on_train_end(self, trainer, pl_module):
        self.record["params"] = _parameter_count(pl_module)  # per-channel α, β created at the first step count now
        cuda = torch.cuda.is_available()
        self.record["peak_memory_bytes"] = (
            torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        self.record["peak_memory_kind"] = "CUDA allocated" if cuda else "process RSS"
        self._write()

    def _write(self) -> None:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            Path(self.path).write_text(json.dumps(self.record))


def _parameter_count(module: torch.nn.Module) -> int:
    """The number of parameter values, leaving out per-channel α, β not created yet (their count is unknown)."""
    return sum(p.numel() for p in module.parameters() if not is_lazy(p))


def stage_metrics(trainer, stage: str) -> dict[str, float]:
    """The trainer's current metrics whose names start with `stage` ("val", "test"), as numbers."""
    return {name: float(value) for name, value in trainer.callback_metrics.items()
            if name.startswith(stage) and getattr(value, "numel", lambda: 1)() == 1}


SETTINGS = ("variant", "K", "alpha_init", "beta_init", "eps", "lr", "lr_scale", "weight_decay", "params")
"""The callback's arguments that change what trains (the others pick the layers or the logging)."""


def own_callback_args(base: dict) -> dict | None:
    """init_args of the config's CAReLUCallback (its first), None when the config has none."""
    callbacks = (base.get("trainer") or {}).get("callbacks") or []
    own = [c for c in callbacks if isinstance(c, dict) and c.get("class_path") == CALLBACK]
    return dict(own[0].get("init_args") or {}) if own else None


def baseline_activation(base: dict) -> str:
    """The activation the CAReLU arm replaces, by class name: what the config's callback targets ("GELU" for
    `targets: [torch.nn.GELU]`), "ReLU" at the callback's default."""
    targets = (own_callback_args(base) or {}).get("targets") or ["torch.nn.ReLU"]
    names = [str(target.get("class_path", target) if isinstance(target, dict) else target) for target in targets]
    return "/".join(name.rsplit(".", 1)[-1] for name in names)


def baseline_title(base: dict) -> str:
    """How reports name the arm trained without any CAReLUCallback, e.g. "ReLU (no callback)"."""
    return f"{baseline_activation(base)} (no callback)"


def carelu_title(base: dict, callback_args: dict | None = None) -> str:
    """How reports name a CAReLU arm: "CAReLU, default" when the callback (the config's, updated with
    `callback_args`) trains at its defaults, else the settings that differ, e.g. "CAReLU, `lr_scale=1.0`"."""
    defaults = {name: p.default for name, p in inspect.signature(CAReLUCallback).parameters.items()}
    args = {**(own_callback_args(base) or {}), **(callback_args or {})}
    changed = [f"`{name}={args[name]}`" for name in SETTINGS if name in args and args[name] != defaults[name]]
    return "CAReLU, " + (", ".join(changed) if changed else "default")


def checkpoint_monitor(base: dict) -> tuple[str, str] | None:
    """(monitor, mode) of the config's first ModelCheckpoint when it monitors a metric (mode "min" when unset,
    Lightning's default), else None."""
    callbacks = (base.get("trainer") or {}).get("callbacks") or []
    for callback in callbacks:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(".ModelCheckpoint"):
            init_args = callback.get("init_args") or {}
            return (init_args["monitor"], init_args.get("mode") or "min") if init_args.get("monitor") else None
    return None


def tested_weights(base: dict) -> str:
    """Which weights `fit --test_after_fit` tests in runs of this config: the best checkpoint of the first
    ModelCheckpoint that monitors a metric, else the final weights."""
    callbacks = (base.get("trainer") or {}).get("callbacks") or []
    for callback in callbacks:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(".ModelCheckpoint"):
            init_args = callback.get("init_args") or {}
            if init_args.get("monitor") and init_args.get("save_top_k", 1) != 0:
                return f"checkpoint with the best {init_args['monitor']}"
            break
    return "final weights"


class _Parsed(Exception):
    """Raised by _ParseOnly once the arguments are parsed: carries the parser and the parsed configuration."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace) -> None:
        super().__init__("parsed")
        self.parser, self.config = parser, config


class _ParseOnly(CAReLUCLI):
    """The `caer` CLI stopped right after parsing, as `--print_config` stops it: nothing is seeded, loaded from a
    checkpoint, instantiated or run. (Not at before_instantiate_classes: by then LightningCLI has seeded this
    process and put the seed it drew for `seed_everything: true` into the config.)"""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(parser, self.config)


def resolved_config(config: str, overrides: list[str]) -> dict:
    """The full `caer fit` configuration for a config file and overrides (what `--print_config` prints), as
    jsonargparse parses and dumps it."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not recommended to provide both args and command line")
            build_cli(["fit", "--config", config, *overrides], cli_class=_ParseOnly)
    except _Parsed as parsed:
        try:  # every value, None included: `skip_unset=False` since jsonargparse 4.49, `skip_none=False` before
            dumped = parsed.parser.dump(parsed.config, format="yaml", skip_unset=False)
        except ValueError as error:  # jsonargparse < 4.49: "Unexpected keyword parameters: {'skip_unset'}"
            if "skip_unset" not in str(error):
                raise
            dumped = parsed.parser.dump(parsed.config, format="yaml", skip_none=False)
        return yaml.safe_load(dumped)["fit"]
    except SystemExit as exit:  # jsonargparse has printed why to stderr
        raise ValueError(f"could not resolve --config {config} with overrides {overrides}") from exit
    raise AssertionError("_ParseOnly returned without raising _Parsed")


def arm_config(base: dict, arm: str, seed: int, run_dir: Path, callback_args: dict | None = None) -> dict:
    """`base` for one arm: without any CAReLUCallback (relu) or with one (carelu; the config's own if it has
    one, its init_args updated with `callback_args`), the seed set, logs and checkpoints in `run_dir`, and a
    RunRecorder."""
    config = json.loads(json.dumps(base))
    trainer = config.setdefault("trainer", {})
    callbacks = [c for c in trainer.get("callbacks") or [] if isinstance(c, dict)]
    own = [c for c in callbacks if c.get("class_path") == CALLBACK]
    others = [c for c in callbacks if c.get("class_path") not in (CALLBACK, RECORDER, OLD_RECORDER)]
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


class RunMismatch(RuntimeError):
    """The output folder holds a finished run of another experiment under the same seed and arm."""


def run_key(base: dict, arm: str, seed: int, label: str, callback_args: dict | None) -> dict:
    """What a run is: the resolved configuration, the arm and its callback settings, the seed, and the version
    of caer_lightning that ran it (JSON values, recorded in result.json and compared before reusing it)."""
    key = {"config": base, "arm": arm, "label": label, "callback_args": callback_args or {}, "seed": seed,
           "caer_lightning": __version__}
    return json.loads(json.dumps(key))


def differences(recorded: Any, wanted: Any, where: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ, each with both values."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        found = []
        for name in sorted(set(recorded) | set(wanted), key=str):
            path = f"{where}.{name}" if where else str(name)
            if name not in recorded or name not in wanted:
                found.append(f"{path}: {recorded.get(name, '(absent)')!r} -> {wanted.get(name, '(absent)')!r}")
            else:
                found += differences(recorded[name], wanted[name], path)
        return found
    return [] if recorded == wanted else [f"{where or '(value)'}: {recorded!r} -> {wanted!r}"]


def finished_run(run_dir: Path, key: dict) -> dict | None:
    """The record of the finished run in `run_dir` if it is the run `key` describes; None when there is none to
    reuse (no record, or a failed run). Raises RunMismatch when it is another experiment's run."""
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        return None
    result = json.loads(result_path.read_text())
    if result.get("status") != "ok":
        return None
    recorded = result.get("key")
    if recorded == key:
        return {**result, "skipped": True, "reused_from": str(run_dir)}
    found = differences(recorded, key) if recorded is not None else [
        "(it was written before runs recorded their configuration)"]
    shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
    raise RunMismatch(
        f"{run_dir} holds a finished run of another experiment (recorded -> now: {shown}). Its numbers would "
        "be reported as this one's: pass another --out, or delete that folder to run it again."
    )


def reusable_run(
    base: dict, arm: str, seed: int, out: Path, *, label: str | None = None, callback_args: dict | None = None,
) -> dict | None:
    """`finished_run` for the folder `run_arm` would use (`out/seed{seed}/{label}`) and the run it would make:
    the record to reuse, or None. Raises RunMismatch when the folder holds another experiment's run."""
    label = label or arm
    return finished_run(out / f"seed{seed}" / label, run_key(base, arm, seed, label, callback_args))


def run_arm(
    base: dict, arm: str, seed: int, out: Path, *, label: str | None = None, callback_args: dict | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Train one arm of one seed in its own process, or reuse the finished run of the same experiment in its
    folder (`finished_run`: a folder holding another experiment's run raises RunMismatch); returns its record.

    `label` names the run (its folder and its "arm" in the record; default `arm`), `callback_args` update the
    CAReLU callback's init_args, `env` is the process environment (default: this one's)."""
    reused = reusable_run(base, arm, seed, out, label=label, callback_args=callback_args)
    if reused is not None:
        return reused
    label = label or arm
    run_dir = out / f"seed{seed}" / label
    key = run_key(base, arm, seed, label, callback_args)
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
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else "no output"
        result.update(status="failed", error=f"exit code {done.returncode}: {reason}", log=str(log_path))
    result["key"] = key
    result_path = run_dir / "result.json"
    result_path.write_text(json.dumps(result))
    return result
