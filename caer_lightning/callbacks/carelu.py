r"""
CAReLUCallback
==============

Swaps activation modules for CAReLU when a run starts, gives their α, β an optimizer group of their own
(own lr, no weight decay by default) kept in step with every LR scheduler, logs per-layer energy dashboards,
and records the swap in checkpoints.

Example::

    from lightning.pytorch import Trainer
    from caer_lightning import CAReLUCallback

    trainer = Trainer(callbacks=[CAReLUCallback(targets=("torch.nn.ReLU",))])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from caer_lightning import _compat, dashboard
from caer_lightning.callbacks import checkpoint_check, packages
from caer_lightning.callbacks.call_probe import CallProbe
from caer_lightning.callbacks.heat_maps import HeatMaps
from caer_lightning.callbacks.interplay import HookAfter, SwapRecord, averaged_models, size_like
from caer_lightning.callbacks.layer_swap import LayerSwap, SwapRefused
from caer_lightning.callbacks.lr_group import CAReLUGroup
from caer_lightning.callbacks.monitor import Monitor
from caer_lightning.guards import check_finite
from caer_lightning.lr_policy import GROUP_NAME
from caer_lightning.record import STATE_KIND
from caer_lightning.swap import Patterns, Target


class CAReLUCallback(*packages.classes("Callback")):  # type: ignore[misc]  # a Callback of both Lightning packages
    r"""Swap activations for CAReLU and train their parameters in their own optimizer group.

    One object per job, each usable alone: `layer_swap` (the swap and the layers it owns, `LayerSwap`),
    `optimizer_group` (α, β's group and its lr ratio, `CAReLUGroup`), `monitor` (statistics, guards, scalars,
    `Monitor`), `heat_maps` and `call_probe`. This class configures them and calls them from Lightning's hooks.

    Args:
        targets: activation classes (or import strings) to replace.
        include: regex(es) searched in qualified module names; only matching modules are replaced.
        exclude: regex(es); matching modules are left alone.
        variant, reduction, K, alpha_init, beta_init, eps: the CAReLU configuration (see ``CAReLU``).
        impl: the CAReLU implementation: "auto", "eager", "triton" or "reference" (see ``carelu``); speed only.
        params: "layer" (one α, β pair per layer, the paper) or "channel" (one pair per channel: shape (C,), C
            the size of dim 1 for the sample and channel reductions, of the last dim for token). Per-channel
            α, β are created at each layer's first forward (``CAReLU(params="channel")``); a strategy that wraps
            the model before it (DDP, FSDP) needs them earlier: the callback then runs the module once on its
            ``example_input_array`` (in eval mode, without gradients) at setup, or stops saying what to do.
        lr: base learning rate of the ``carelu`` group; default ``lr_scale`` × the lr of the group the
            parameters came from (group 0 if none held them).
        lr_scale: multiplier used when ``lr`` is None. Default: 1.0 under Adam-like optimizers, 0.1 under
            SGD and other optimizers whose step grows with the gradient (README: "Stable by default").
        weight_decay: weight decay of the ``carelu`` group (0.0: decay pulls β, and so the scale, toward 0).
        name: name of the optimizer group and of the dashboard section. Default ``carelu`` for the first
            CAReLUCallback of the Trainer, ``carelu_1``, ``carelu_2``, ... for the next ones.
        log_every_n_steps: cadence of the per-layer statistics and of the guards that read them (only these
            steps are measured; with or without a logger); None uses the Trainer's; 0 turns them off.
        log_histograms: whether to log histograms of p per layer (TensorBoard, at epoch end).

    Raises:
        ValueError: on any invalid argument, naming it, its value and the accepted values.
    """

    def __init__(
        self,
        targets: Target | Sequence[Target] = ("torch.nn.ReLU",),
        include: Patterns = None,
        exclude: Patterns = None,
        variant: str = "energy",
        reduction: str = "sample",
        K: float = 2.0,
        alpha_init: float = 0.0,
        beta_init: float | None = None,
        eps: float = 1e-6,
        lr: float | None = None,
        lr_scale: float | None = None,
        weight_decay: float = 0.0,
        log_every_n_steps: int | None = None,
        log_histograms: bool = True,
        name: str | None = None,
        impl: str = "auto",
        params: str = "layer",
    ) -> None:
        activation_config = dict(
            variant=variant, reduction=reduction, K=K, alpha_init=alpha_init, beta_init=beta_init, eps=eps,
            params=params,
        )
        self.layer_swap = LayerSwap(targets, include, exclude, activation_config, impl)
        self.optimizer_group = CAReLUGroup(lr, lr_scale, weight_decay)
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 0
        ):
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps!r} is not supported; accepted values: None (the Trainer's), "
                "0 (off) or an int >= 1"
            )
        if name is not None and not (isinstance(name, str) and name):
            raise ValueError(f"name={name!r} is not supported; accepted values: None or a non-empty string")
        self.name, self.log_every_n_steps = name, log_every_n_steps
        self.monitor = Monitor(log_histograms)
        self.heat_maps = HeatMaps()
        self.call_probe = CallProbe()
        self._copies_waiting = False  # averaged copies hold lazy per-channel α, β that wait for the model's
        # The main process runs no hook before it launches spawn/fork workers: this is the last point to prepare
        # for bringing their weights back. Whether it could is kept on the callback, which the workers receive.
        self.spawn_recovery = _compat.install_spawn_recovery()

    # --- what it is configured with ------------------------------------------------------------------------------

    @property
    def swapped(self) -> list[str]:
        """The names of the CAReLU layers this callback trains and logs, in model order."""
        return self.layer_swap.names

    @property
    def group_name(self) -> str:
        """The optimizer group and dashboard section (resolved in `setup`)."""
        return self.optimizer_group.name

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to redo this swap on a fresh model (plain values, safe to checkpoint)."""
        return self.layer_swap.config

    @property
    def optimizer_config(self) -> dict[str, Any]:
        """How α, β are optimized (recorded in checkpoints, compared on resume)."""
        return self.optimizer_group.config

    @property
    def dashboard_title(self) -> str:
        """This callback's section of the TensorBoard custom-scalars layout."""
        return "CAReLU" if self.group_name == GROUP_NAME else f"CAReLU ({self.group_name})"

    @property
    def state_key(self) -> str:
        swap = self.layer_swap
        key = dict(targets=self.config["targets"], include=swap.include, exclude=swap.exclude)
        if self.name is not None:
            key["name"] = self.name
        return f"{type(self).__qualname__}{key!r}"  # the form Lightning's own callbacks use

    # --- hooks, in life-cycle order ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Swap before checkpoint weights are restored, DDP/FSDP wrap the model and optimizers are built; again
        after the module's `configure_model`, which runs after every callback's `setup`."""
        if _compat.uses_multiprocessing(trainer) and not self.spawn_recovery:
            raise MisconfigurationException(
                f"{_compat.missing(_compat.SPAWN_RECOVERY)} Without it the trained alpha, beta would not reach "
                "the model in the main process; use strategy='ddp' (or 'auto') instead."
            )
        self.optimizer_group.name = self._resolve_group_name(trainer)
        self.heat_maps.tag = self.group_name
        self._copies_waiting = True  # until a forward has created what the copies' lazy layers need
        configure_model_pending = packages.is_overridden("configure_model", pl_module)
        self._swap(trainer, pl_module, final=not configure_model_pending)
        if not configure_model_pending:
            self._create_parameters_before_wrapping(trainer, pl_module, stage)
        if configure_model_pending:
            after = functools.partial(self._after_configure_model, trainer, pl_module, stage)
            HookAfter.add(pl_module, "configure_model", self.state_key, after)
        SwapRecord.of(pl_module).swaps[self.state_key] = self.state_dict()
        check = functools.partial(checkpoint_check.check_fits, pl_module)
        HookAfter.add(pl_module, "on_load_checkpoint", checkpoint_check.HOOK_KEY, check)

    def before_main_process_loads_weights(self, trainer: pl.Trainer) -> None:
        """Spawn/fork strategies trained in workers: give the main process's model the same CAReLU layers before
        Lightning loads the trained weights into it (see `_compat.install_spawn_recovery`)."""
        self.optimizer_group.name = self._resolve_group_name(trainer)
        self._swap(trainer, trainer.lightning_module, final=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Move α, β into a group of the optimizer that trains their part of the model; extend its schedulers.
        α, β stay out of every optimizer (and frozen) when their part of the model is held by none (e.g. a
        frozen loss network), unless `include` selected them explicitly."""
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self.optimizer_group.attach(
            trainer.optimizers, schedulers, pl_module, self.layer_swap.layers,
            train_unheld=self.layer_swap.include is not None,
        )
        self.layer_swap.report_frozen()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume restored the optimizer: apply this run's lr and weight decay to the group. Start the
        monitor at its cadence; the first CAReLUCallback writes the TensorBoard layout of all of them."""
        self.optimizer_group.apply_settings()
        layers = {name: pl_module.get_submodule(name) for name in self.swapped}
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        self.monitor.start(layers, every)  # the guards run on these steps even without a logger
        self.heat_maps.start(len(layers))
        callbacks = _carelu_callbacks(trainer)
        if self.monitor.every and trainer.is_global_zero and callbacks[0] is self:
            layout = {}
            for callback in callbacks:
                per_channel = [n for n, m in callback.layer_swap.layers.items() if m.params == "channel"]
                layout.update(dashboard.custom_scalars_layout(callback.swapped, callback.dashboard_title, per_channel))
            for writer in _tensorboard_writers(trainer):
                writer.add_custom_scalars(layout)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.optimizer_group.keep_ratios()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        """Hold the lr ratio for this step; measure statistics during logging steps only; probe call sites on
        the first batch."""
        self.optimizer_group.keep_ratios()
        if self.call_probe.places is None:
            self.call_probe.start({name: pl_module.get_submodule(name) for name in self.swapped})
        self.monitor.begin_step(trainer.global_step)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        """After a forward: end the call probe; give weight-averaging copies the per-channel α, β the model's
        layers created in it (before those callbacks first average them)."""
        if self.call_probe.running:
            self.call_probe.finish()
        if self._copies_waiting:
            self._copies_waiting = size_like(pl_module, averaged_models(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.optimizer_group.keep_ratios()  # Lightning stepped the schedulers just before this hook

        def log(metrics: dict[str, float], step: int) -> None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

        reduce = functools.partial(trainer.strategy.reduce, reduce_op="sum")
        self.monitor.end_step(trainer.global_step, reduce, trainer.is_global_zero, log)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """TensorBoard: histograms of p per layer each epoch; the heat maps when they are due (`HeatMaps`)."""
        if not (self.monitor.every and trainer.is_global_zero and self.monitor.history):
            return
        writers = _tensorboard_writers(trainer)
        self.monitor.write_histograms(writers, trainer.global_step)
        if self.heat_maps.due():
            self.heat_maps.draw(writers, self.monitor, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The heat maps as they end, and the per-layer summary: a Markdown table in TensorBoard's Text tab and
        in the console."""
        self.monitor.stop()
        # read on every rank: gathering FSDP2-sharded α, β is a collective
        final = dashboard.parameters(self.monitor.modules).cpu() if self.monitor.every else None
        if not (self.monitor.every and trainer.is_global_zero and self.monitor.history):
            return
        writers = _tensorboard_writers(trainer)
        self.heat_maps.draw(writers, self.monitor, trainer.global_step)
        table = self.monitor.summary(final)
        rank_zero_info(f"CAReLUCallback: per-layer summary at step {trainer.global_step} ({self.group_name})\n{table}")
        for writer in writers:
            writer.add_text(f"{self.group_name}/summary", table, trainer.global_step)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse to let a checkpoint with non-finite α or β be written (one host sync per checkpoint)."""
        modules = [pl_module.get_submodule(name) for name in self.swapped]
        if modules:
            parameters = dashboard.parameters(modules).cpu()
            check_finite(self.swapped, parameters, trainer.global_step, "found when saving a checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": STATE_KIND, "config": self.config, "swapped": list(self.swapped),
            "layers": {name: module.layer_config() for name, module in self.layer_swap.layers.items()},
            "optimizer": self.optimizer_config,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("optimizer")
        if recorded is not None and recorded != self.optimizer_config:
            was = ", ".join(f"{k}={v}" for k, v in recorded.items())
            now = ", ".join(f"{k}={v}" for k, v in self.optimizer_config.items())
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint's '{self.group_name}' group was trained with {was}; this run "
                f"uses {now}, which applies from the first resumed step (the optimizer state, momentum included, "
                "is kept)"
            )
        recorded_config = state_dict.get("config")
        if isinstance(recorded_config, dict):  # checkpoints from before params existed: one pair per layer
            recorded_config = {"params": "layer", **recorded_config}
        if recorded_config != self.config:
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint was made with {recorded_config}, this run uses "
                f"{self.config}; continuing with this run's configuration"
            )
        if self.swapped and state_dict.get("swapped") not in (None, self.swapped):
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint swapped {state_dict.get('swapped')}, this run swapped {self.swapped}"
            )

    # --- helpers -----------------------------------------------------------------------------------------------

    def _after_configure_model(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        HookAfter.discard(pl_module, "configure_model", self.state_key)
        self._swap(trainer, pl_module, final=True)
        self._create_parameters_before_wrapping(trainer, pl_module, stage)
        SwapRecord.of(pl_module).swaps[self.state_key] = self.state_dict()

    def _swap(self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool) -> None:
        """Swap `pl_module` and the copies weight-averaging callbacks hold, leaving other callbacks' layers."""
        others: set[int] = set()
        for callback in _carelu_callbacks(trainer):
            if callback is not self:
                others |= callback.layer_swap.owned
        try:
            self.layer_swap.swap(pl_module, averaged_models(trainer), others, final=final)
        except (SwapRefused, _compat.MissingPrivateAPI) as error:
            raise MisconfigurationException(str(error)) from None

    def _create_parameters_before_wrapping(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Per-channel α, β are created at each layer's first forward; strategies that wrap the model for training
        before it (DDP, FSDP, DeepSpeed: every strategy but a single device's) need them now. Run the module once on
        its `example_input_array`, or stop saying what to do."""
        lazy = [name for name, module in self.layer_swap.layers.items() if module.has_uninitialized_params()]
        if not lazy or stage != "fit" or isinstance(trainer.strategy, packages.classes("strategies.SingleDeviceStrategy")):
            return
        strategy = type(trainer.strategy).__name__
        ways_out = (
            "set `example_input_array` on your LightningModule (the callback runs the module on it once, in eval "
            "mode without gradients, at setup), or swap in your module with "
            "CAReLU(params='channel', num_channels=C) per layer (README: Per-channel alpha, beta)"
        )
        example = pl_module.example_input_array
        if example is None:
            raise MisconfigurationException(
                f"CAReLUCallback(params='channel'): {strategy} wraps the model before its first forward, and the "
                f"per-channel alpha, beta of {lazy} are created at that forward (one per channel of the layer's "
                f"input). To create them before: {ways_out}."
            )
        _run_example(pl_module, example)
        missed = [name for name in lazy if self.layer_swap.layers[name].has_uninitialized_params()]
        if missed:
            raise MisconfigurationException(
                f"CAReLUCallback(params='channel'): the forward on example_input_array did not run {missed}, so "
                f"their per-channel alpha, beta do not exist yet, and {strategy} needs them before training. To "
                f"create them: {ways_out}."
            )
        rank_zero_info(
            f"CAReLUCallback: created the per-channel alpha, beta of {len(lazy)} layers with one forward on "
            f"example_input_array ({strategy} wraps the model before its first training step)"
        )

    def _resolve_group_name(self, trainer: pl.Trainer) -> str:
        """`name`, or carelu, carelu_1, ... by this callback's place among the Trainer's CAReLUCallbacks."""
        callbacks = _carelu_callbacks(trainer)
        names = [c.name or (GROUP_NAME if i == 0 else f"{GROUP_NAME}_{i}") for i, c in enumerate(callbacks)]
        index = next(i for i, c in enumerate(callbacks) if c is self)
        name = names.pop(index)
        if name in names:
            raise MisconfigurationException(
                f"CAReLUCallback(name={self.name!r}): another CAReLUCallback of this Trainer uses the group name "
                f"{name!r}; accepted values: a name no other CAReLUCallback uses, or None"
            )
        return name


def _run_example(pl_module: pl.LightningModule, example: Any) -> None:
    """One forward on `example` (a tensor, or a tuple or dict of arguments, as Lightning's ModelSummary takes
    example_input_array) on the module's device, in eval mode, without gradients."""
    example = move_data_to_device(example, pl_module.device)
    modes = [(module, module.training) for module in pl_module.modules()]  # frozen parts may be in eval mode
    pl_module.eval()
    try:
        with torch.no_grad():
            if isinstance(example, (list, tuple)):
                pl_module(*example)
            elif isinstance(example, dict):
                pl_module(**example)
            else:
                pl_module(example)
    finally:
        for module, training in modes:
            module.training = training


def _carelu_callbacks(trainer: pl.Trainer) -> list[CAReLUCallback]:
    return [c for c in trainer.callbacks if isinstance(c, CAReLUCallback)]


def _tensorboard_writers(trainer: pl.Trainer) -> list:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, packages.classes("loggers.TensorBoardLogger"))]
