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
import inspect
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning.pytorch.utilities.model_helpers import is_overridden

from caer_lightning import dashboard
from caer_lightning.activation import STATISTICS, CAReLU
from caer_lightning.callbacks.interplay import (
    HookAfter,
    SwapRecord,
    averaged_models,
    context_parameters,
    in_frozen_part,
    install_spawn_recovery,
)
from caer_lightning.guards import SATURATION_LIMIT, check_finite, saturated_layers, saturation_message
from caer_lightning.optim import GROUP_NAME, NewGroup, default_lr_scale, extend_scheduler, find_group, keep_ratio, move_to_own_group
from caer_lightning.record import (
    STATE_KIND,
    carelu_layers,
    describe,
    layers_in_state_dict,
    recorded_swaps,
)
from caer_lightning.swap import Patterns, Target, class_path, compile_patterns, resolve_targets, swap_activations

# The heat maps take a fraction of a second to draw; they are drawn at most as often as keeps them under this
# share of the training time (and always at the end of training).
FIGURE_BUDGET = 0.01


class CAReLUCallback(Callback):
    r"""Swap activations for CAReLU and train their parameters in their own optimizer group.

    Args:
        targets: activation classes (or import strings) to replace.
        include: regex(es) searched in qualified module names; only matching modules are replaced.
        exclude: regex(es); matching modules are left alone.
        variant, reduction, K, alpha_init, beta_init, eps: the CAReLU configuration (see ``CAReLU``).
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
    ) -> None:
        self.targets = resolve_targets(targets)
        self.include, self.exclude = include, exclude
        compile_patterns("include", include)  # validate the regexes now, before any training
        compile_patterns("exclude", exclude)
        self.activation_config = dict(
            variant=variant, reduction=reduction, K=K, alpha_init=alpha_init, beta_init=beta_init, eps=eps
        )
        CAReLU(**self.activation_config)  # validates every activation argument now, before any training
        _check_positive("lr", lr, allow_none=True)
        _check_positive("lr_scale", lr_scale, allow_none=True)
        if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
                or not math.isfinite(weight_decay) or weight_decay < 0):
            raise ValueError(f"weight_decay={weight_decay!r} is not supported; accepted values: a finite number >= 0")
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 0
        ):
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps!r} is not supported; accepted values: None (the Trainer's), "
                "0 (off) or an int >= 1"
            )
        if name is not None and not (isinstance(name, str) and name):
            raise ValueError(f"name={name!r} is not supported; accepted values: None or a non-empty string")
        self.lr, self.lr_scale, self.weight_decay, self.name = lr, lr_scale, weight_decay, name
        self.log_every_n_steps, self.log_histograms = log_every_n_steps, log_histograms
        self.swapped: list[str] = []
        self.group_name = name or GROUP_NAME  # resolved in setup, once the Trainer's callbacks are known
        self._created: set[int] = set()  # ids of the CAReLU modules this callback created
        self._claimed: set[int] = set()  # ids of the CAReLU modules this callback trains and logs
        self._frozen: list[str] = []  # layers inside frozen parts: α, β frozen with them
        self._layers: dict[str, CAReLU] = {}  # the claimed layers by name (what the checkpoint records)
        self._groups: list[tuple[torch.optim.Optimizer, NewGroup]] = []
        self._call_places: dict[str, set[tuple[str, int, int]]] | None = None  # callers of each CAReLU, 1st step
        self._probe_handles: list[RemovableHandle] = []
        self._modules: list[CAReLU] = []
        self._log_every = 0  # resolved cadence; 0: no statistics
        self._tracking_step: int | None = None  # global step whose statistics are being measured
        self._history: list[Tensor] = []  # rank zero: per logged step, (layers, 3) mean p, s and saturation
        self._history_steps: list[int] = []  # rank zero: the logged steps of `_history`
        self._final_metrics: dict[str, float] = {}  # rank zero: the last logged value of every key
        self._maps_drawn_at, self._maps_seconds, self._maps_step = 0.0, 0.0, None  # when, how long, at which step
        self._epoch_statistics: Tensor | None = None  # rank zero: summed statistics of the epoch's logged steps
        self._saturated: set[str] = set()  # layers already named in a saturation warning
        install_spawn_recovery()

    @property
    def state_key(self) -> str:
        key = dict(targets=[class_path(t) for t in self.targets], include=self.include, exclude=self.exclude)
        if self.name is not None:
            key["name"] = self.name
        return self._generate_state_key(**key)

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to redo this swap on a fresh model (plain values, safe to checkpoint)."""
        return dict(
            targets=[class_path(t) for t in self.targets], include=self.include, exclude=self.exclude,
            **self.activation_config,
        )

    @property
    def optimizer_config(self) -> dict[str, Any]:
        """How α, β are optimized (recorded in checkpoints, compared on resume)."""
        return dict(lr=self.lr, lr_scale=self.lr_scale, weight_decay=self.weight_decay)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Swap before checkpoint weights are restored, DDP/FSDP wrap the model and optimizers are built; again
        after the module's `configure_model`, which runs after every callback's `setup`."""
        self.group_name = self._resolve_group_name(trainer)
        configure_model_pending = is_overridden("configure_model", pl_module)
        self._swap(trainer, pl_module, final=not configure_model_pending)
        if configure_model_pending:
            after = functools.partial(self._after_configure_model, trainer, pl_module)
            HookAfter.add(pl_module, "configure_model", self.state_key, after)
        SwapRecord.of(pl_module).swaps[self.state_key] = self.state_dict()
        HookAfter.add(pl_module, "on_load_checkpoint", _FITS_CHECKPOINT, functools.partial(_check_fits, pl_module))

    def _after_configure_model(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        HookAfter.discard(pl_module, "configure_model", self.state_key)
        self._swap(trainer, pl_module, final=True)
        SwapRecord.of(pl_module).swaps[self.state_key] = self.state_dict()

    def _swap(self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool) -> None:
        """Swap `pl_module` and the copies weight-averaging callbacks hold; claim this callback's layers."""
        factory = self._new_carelu
        try:
            replaced = swap_activations(
                pl_module, self.targets, include=self.include, exclude=self.exclude, factory=factory
            )
        except ValueError as error:
            if final or "matched no module" not in str(error):
                raise MisconfigurationException(f"CAReLUCallback: {error}") from None
            replaced = []
        for copy in averaged_models(trainer):  # taken in their setup, before this swap when listed first
            try:
                swap_activations(copy, self.targets, include=self.include, exclude=self.exclude, factory=factory)
            except ValueError:
                pass  # already swapped (taken after this callback's setup)
        self._claim(trainer, pl_module)
        if final and not self.swapped:
            others = [n for n, m in pl_module.named_modules() if isinstance(m, CAReLU)]
            raise MisconfigurationException(
                f"CAReLUCallback(include={self.include!r}, exclude={self.exclude!r}) matched no module: every "
                f"CAReLU of the model ({others}) belongs to another CAReLUCallback of this Trainer. Give each "
                "callback include/exclude patterns that select different layers."
            )
        if replaced:
            rank_zero_info(f"CAReLUCallback: swapped {len(replaced)} activations for CAReLU: {replaced}")

    def _new_carelu(self, old: nn.Module) -> CAReLU:
        module = CAReLU(**self.activation_config)
        self._created.add(id(module))
        return module

    def _claim(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """This callback's layers: the CAReLUs it created, and CAReLUs already in the model (a model swapped
        beforehand) that its include/exclude select and no other CAReLUCallback of the Trainer claims.

        A layer it created inside a frozen part of the model starts frozen too (unless `include` asked for it
        explicitly), so that fine-tuning callbacks unfreeze it with its block.
        """
        others: set[int] = set()
        for callback in trainer.callbacks:
            if isinstance(callback, CAReLUCallback) and callback is not self:
                others |= callback._created | callback._claimed
        included, excluded = compile_patterns("include", self.include), compile_patterns("exclude", self.exclude)
        self.swapped, self._layers = [], {}
        for name, module in pl_module.named_modules():
            key = id(module)
            if not isinstance(module, CAReLU) or key in others:
                continue
            selected = (not included or any(p.search(name) for p in included)) and not any(
                p.search(name) for p in excluded
            )
            if key in self._created or key in self._claimed or selected:
                fresh = key in self._created and key not in self._claimed
                if fresh and self.include is None and in_frozen_part(pl_module, name):
                    module.requires_grad_(False)
                    self._frozen.append(name)
                self._claimed.add(key)
                self.swapped.append(name)
                self._layers[name] = module
        self._warn_other_configuration()

    def _warn_other_configuration(self) -> None:
        """Layers that were CAReLU before this callback came keep their configuration: say so when it is not
        this callback's (the checkpoint records what each layer holds)."""
        config = self.activation_config
        wanted = dict(variant=config["variant"], reduction=config["reduction"], K=float(config["K"]),
                      eps=float(config["eps"]))
        other = {n: m.layer_config() for n, m in self._layers.items() if id(m) not in self._created}
        other = {n: c for n, c in other.items() if c != wanted}
        if other:
            holds = ", ".join(f"{n} ({', '.join(f'{k}={v!r}' for k, v in c.items())})" for n, c in other.items())
            rank_zero_warn(
                f"CAReLUCallback({', '.join(f'{k}={v!r}' for k, v in wanted.items())}): the model already holds "
                f"CAReLU layers configured otherwise, which keep their configuration: {holds}. Checkpoints record "
                "what each layer holds. To train with this configuration, swap a model that has no CAReLU yet."
            )

    def _resolve_group_name(self, trainer: pl.Trainer) -> str:
        """`name`, or carelu, carelu_1, ... by this callback's place among the Trainer's CAReLUCallbacks."""
        callbacks = [c for c in trainer.callbacks if isinstance(c, CAReLUCallback)]
        names = [c.name or (GROUP_NAME if i == 0 else f"{GROUP_NAME}_{i}") for i, c in enumerate(callbacks)]
        index = next(i for i, c in enumerate(callbacks) if c is self)
        name = names.pop(index)
        if name in names:
            raise MisconfigurationException(
                f"CAReLUCallback(name={self.name!r}): another CAReLUCallback of this Trainer uses the group name "
                f"{name!r}; accepted values: a name no other CAReLUCallback uses, or None"
            )
        return name

    def _before_main_process_loads_weights(self, trainer: pl.Trainer) -> None:
        """Spawn/fork strategies trained in workers: give the main process's model the same CAReLU layers
        before Lightning loads the trained weights into it (see `interplay.install_spawn_recovery`)."""
        self.group_name = self._resolve_group_name(trainer)
        self._swap(trainer, trainer.lightning_module, final=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Move α, β into a group of the optimizer that trains their part of the model; extend its schedulers.

        α, β stay out of every optimizer (and frozen) when their part of the model is held by none (e.g. a
        frozen loss network), unless `include` selected them explicitly.
        """
        self._groups = []
        if not trainer.optimizers:
            rank_zero_warn("CAReLUCallback: the Trainer has no optimizer, so CAReLU's alpha and beta won't train")
            return
        by_optimizer: dict[int, list[nn.Parameter]] = {}
        unheld = []
        for name in self.swapped:
            module = pl_module.get_submodule(name)
            index = _holder(trainer.optimizers, (module.alpha,))
            if index is None:  # e.g. LightningCLI built the optimizer before the swap: follow the layer's part
                index = _holder(trainer.optimizers, context_parameters(pl_module, name))
            if index is None and self.include is None:
                unheld.append(name)
                module.requires_grad_(False)
                continue
            by_optimizer.setdefault(index or 0, []).extend((module.alpha, module.beta))
        for index, owned in sorted(by_optimizer.items()):
            optimizer = trainer.optimizers[index]
            new = move_to_own_group(
                optimizer, owned, name=self.group_name, lr=self.lr, lr_scale=self.lr_scale,
                weight_decay=self.weight_decay,
            )
            self._groups.append((optimizer, new))
            keep_ratio(optimizer, self.group_name, new.ratio)
            rank_zero_info(
                f"CAReLUCallback: alpha, beta of {len(owned) // 2} layers train in group '{self.group_name}' of "
                f"{type(optimizer).__name__} at lr {optimizer.param_groups[new.index]['lr']:.4g} "
                f"({self._lr_rule(optimizer)})"
            )
            for config in trainer.lr_scheduler_configs:
                if config.scheduler.optimizer is optimizer:
                    extend_scheduler(config.scheduler, new)
        if self._frozen:  # said once: the list only holds layers swapped since
            rank_zero_info(
                f"CAReLUCallback: {self._frozen} sit in frozen parts of the model: their alpha, beta are frozen "
                "too and unfreeze with them (pass include=... to train them anyway)"
            )
            self._frozen = []
        if unheld:
            rank_zero_info(
                f"CAReLUCallback: no optimizer holds the parts of the model around {unheld} (frozen or unused "
                "sub-networks): their alpha, beta are frozen and not trained (pass include=... to train them)"
            )

    def _lr_rule(self, optimizer: torch.optim.Optimizer) -> str:
        if self.lr is not None:
            return f"lr={self.lr:g}"
        if self.lr_scale is not None:
            return f"lr_scale={self.lr_scale:g}"
        return f"lr_scale={default_lr_scale(optimizer):g}, the default for {type(optimizer).__name__}"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume restored the optimizer: apply this run's lr and weight decay to the group. Resolve the
        logging cadence and write the TensorBoard custom-scalars layout (every CAReLUCallback's section)."""
        for optimizer, new in self._groups:
            index = find_group(optimizer, self.group_name)
            if index is not None:
                optimizer.param_groups[index]["weight_decay"] = self.weight_decay
            keep_ratio(optimizer, self.group_name, new.ratio)
        self._modules = [pl_module.get_submodule(name) for name in self.swapped]
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        self._log_every = every if self._modules else 0  # the guards run on these steps even without a logger
        self._history, self._history_steps, self._final_metrics = [], [], {}
        self._epoch_statistics, self._tracking_step = None, None
        # before the first drawing, its cost is estimated (about 0.2 s a map for 17 layers on a 2-core CPU)
        self._maps_drawn_at, self._maps_seconds, self._maps_step = time.perf_counter(), 0.035 * len(self.swapped), None
        if self._log_every and trainer.is_global_zero:
            layout = {}
            for callback in trainer.callbacks:
                if isinstance(callback, CAReLUCallback) and callback.swapped:
                    layout.update(dashboard.custom_scalars_layout(callback.swapped, callback.dashboard_title))
            for writer in _tensorboard_writers(trainer):
                writer.add_custom_scalars(layout)

    @property
    def dashboard_title(self) -> str:
        """This callback's section of the TensorBoard custom-scalars layout."""
        return "CAReLU" if self.group_name == GROUP_NAME else f"CAReLU ({self.group_name})"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep_ratios()

    def _keep_ratios(self) -> None:
        """Hold each CAReLU group's lr at its ratio to its source group (schedulers stepped since)."""
        for optimizer, new in self._groups:
            keep_ratio(optimizer, self.group_name, new.ratio)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        """Hold the lr ratio for this step; measure statistics during logging steps only; probe call sites on
        the first batch."""
        self._keep_ratios()
        if self._call_places is None:
            self._start_call_probe(pl_module)
        if self._log_every and self._tracking_step is None and trainer.global_step % self._log_every == 0:
            self._tracking_step = trainer.global_step
            self._set_tracking(True)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self._probe_handles:
            self._finish_call_probe()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._keep_ratios()  # Lightning stepped the schedulers just before this hook
        if self._tracking_step is None or trainer.global_step == self._tracking_step:
            return  # not a logging step, or gradient accumulation: the optimizer has not stepped yet
        self._log_statistics(trainer, self._tracking_step)
        self._set_tracking(False)
        self._tracking_step = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """TensorBoard: histograms of p per layer each epoch; the heat maps when they are due (see `_draw_maps`)."""
        if not (self._log_every and trainer.is_global_zero and self._history):
            return
        for writer in _tensorboard_writers(trainer):
            if self.log_histograms and self._epoch_statistics is not None:
                dashboard.write_histograms(writer, self.swapped, self._epoch_statistics, trainer.global_step)
        self._epoch_statistics = None
        if time.perf_counter() - self._maps_drawn_at >= self._maps_seconds / FIGURE_BUDGET:
            self._draw_maps(trainer)

    def _draw_maps(self, trainer: pl.Trainer) -> None:
        """Labelled layers × steps heat maps of the energy ratio, the scale and the saturation. Drawn at an epoch
        end (never on a training step) when the training time since the last drawing is long enough to keep
        their drawing under FIGURE_BUDGET of it, and at the end of training."""
        writers = _tensorboard_writers(trainer)
        if not writers or trainer.global_step == self._maps_step:
            return
        started = time.perf_counter()
        history = torch.stack(self._history)  # logged steps × layers × (mean p, mean s, mean saturation)
        K = max(m.K for m in self._modules)
        top = max(SATURATION_LIMIT * 1.5, float(history[..., 2].nan_to_num(0).max()))
        maps = (
            ("energy_ratio_map", "energy ratio p (share of the energy carried by positives)", "p", 0, 0.0, 1.0, False),
            ("scale_map", "scale s = K·tanh(α·p + β); blue: negatives won", "s", 1, -K, K, True),
            ("saturation_map", f"saturation |α·p + β| (above {SATURATION_LIMIT:g}: stuck)", "|α·p + β|", 2, 0.0, top,
             False),
        )
        for tag, title, label, column, low, high, diverging in maps:
            figure = dashboard.heatmap_figure(
                history[..., column], self._history_steps, self.swapped, title=title, label=label, low=low,
                high=high, diverging=diverging,
            )
            for writer in writers:
                writer.add_figure(f"{self.group_name}/{tag}", figure, trainer.global_step, close=False)
        self._maps_step = trainer.global_step
        self._maps_drawn_at = time.perf_counter()
        self._maps_seconds = self._maps_drawn_at - started

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The heat maps as they end, and the per-layer summary: a Markdown table in TensorBoard's Text tab and
        in the console."""
        self._set_tracking(False)
        self._tracking_step = None
        if not (self._log_every and trainer.is_global_zero and self._history):
            return
        self._draw_maps(trainer)
        history = torch.stack(self._history)
        final = dict(self._final_metrics)
        for name, (alpha, beta) in zip(self.swapped, dashboard.parameters(self._modules).tolist()):
            final[dashboard.key(name, "alpha")], final[dashboard.key(name, "beta")] = alpha, beta
        flags = {}
        for index, name in enumerate(self.swapped):
            scale, saturation = history[:, index, 1].nan_to_num(0.0), history[:, index, 2].nan_to_num(0.0)
            happened = (["flipped sign"] if bool((scale < 0).any()) else []) + (
                ["saturated"] if bool((saturation > SATURATION_LIMIT).any()) else []
            )
            flags[name] = ", ".join(happened)
        table = dashboard.summary_table(self.swapped, final, flags)
        rank_zero_info(f"CAReLUCallback: per-layer summary at step {trainer.global_step} ({self.group_name})\n{table}")
        for writer in _tensorboard_writers(trainer):
            writer.add_text(f"{self.group_name}/summary", table, trainer.global_step)

    def _set_tracking(self, on: bool) -> None:
        for module in self._modules:
            module.track_statistics = on
            if not on:
                module.pop_statistics()  # drop anything a step that was not logged left behind

    def _log_statistics(self, trainer: pl.Trainer, step: int) -> None:
        """One collective (under DDP) and one device-to-host copy for all layers together; the guards run on
        every rank, so that all of them stop together."""
        statistics = trainer.strategy.reduce(dashboard.collect(self._modules), reduce_op="sum")
        parameters = dashboard.parameters(self._modules)
        table = torch.cat((statistics, parameters.to(statistics)), dim=1).cpu()
        statistics, parameters = table[:, :-2], table[:, -2:]
        check_finite(self.swapped, parameters, step, "found on a logged step")
        if not trainer.is_global_zero:
            return
        metrics = dashboard.scalars(self.swapped, statistics, parameters)
        self._warn_saturated(metrics, step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        groups = statistics[:, STATISTICS.index("groups")]
        columns = [STATISTICS.index(c) for c in ("sum_p", "sum_s", "sum_saturation")]
        self._history.append(statistics[:, columns] / groups.unsqueeze(1))  # NaN for a layer that did not run
        self._history_steps.append(step)
        self._final_metrics.update(metrics)
        self._epoch_statistics = statistics if self._epoch_statistics is None else self._epoch_statistics + statistics

    def _warn_saturated(self, metrics: dict[str, float], step: int) -> None:
        """One warning for the layers that saturated since the last one (each layer is named once)."""
        saturation = [metrics.get(dashboard.key(n, "saturation"), 0.0) for n in self.swapped]
        new = {n: v for n, v in saturated_layers(self.swapped, saturation).items() if n not in self._saturated}
        if new:
            self._saturated.update(new)
            scales = {n: metrics[dashboard.key(n, "scale")] for n in new}
            rank_zero_warn(saturation_message(new, scales, step))

    def _start_call_probe(self, pl_module: pl.LightningModule) -> None:
        """Record, until the first backward, the places each CAReLU is called from, to find one module called
        at several places the swap could not tell apart (a loop calls it from one place, however often)."""
        self._call_places = {}
        for name in self.swapped:
            hook = functools.partial(_record_call_place, self._call_places.setdefault(name, set()))
            self._probe_handles.append(pl_module.get_submodule(name).register_forward_pre_hook(hook))

    def _finish_call_probe(self) -> None:
        for handle in self._probe_handles:
            handle.remove()
        self._probe_handles = []
        shared = {n: sorted({place[0] for place in places}) for n, places in self._call_places.items() if len(places) > 1}
        if shared:
            described = "; ".join(f"{name} from {', '.join(places)}" for name, places in shared.items())
            rank_zero_warn(
                f"CAReLUCallback: in the first step, these activations were called from several places: {described}. "
                "Each is one module called at places the swap could not tell apart (calls from code it cannot "
                "read, or one module in two containers), so those places share one alpha and beta. Give each "
                "place its own activation module if they should learn separately."
            )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse to let a checkpoint with non-finite α or β be written (one host sync per checkpoint)."""
        modules = [pl_module.get_submodule(name) for name in self.swapped]
        if modules:
            parameters = dashboard.parameters(modules).cpu()
            check_finite(self.swapped, parameters, trainer.global_step, "found when saving a checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": STATE_KIND, "config": self.config, "swapped": list(self.swapped),
            "layers": {name: module.layer_config() for name, module in self._layers.items()},
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
        if state_dict.get("config") != self.config:
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint was made with {state_dict.get('config')}, this run uses "
                f"{self.config}; continuing with this run's configuration"
            )
        if self.swapped and state_dict.get("swapped") not in (None, self.swapped):
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint swapped {state_dict.get('swapped')}, this run swapped {self.swapped}"
            )


_FITS_CHECKPOINT = "caer_lightning_fits_checkpoint"


def _check_fits(pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Runs after the module's `on_load_checkpoint`, before the Trainer loads the checkpoint's weights into it:
    a checkpoint whose CAReLU layers are not the model's stops here with what each side holds and the way out
    (Lightning's own error only lists missing or unexpected keys)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or pl_module.strict_loading is False:
        return
    in_model = set(carelu_layers(pl_module))
    in_checkpoint = set(layers_in_state_dict(state, pl_module))
    if in_model == in_checkpoint:
        return
    raise MisconfigurationException(
        "CAReLUCallback: this checkpoint's CAReLU layers are not this model's, so its weights cannot be loaded. "
        f"The checkpoint holds alpha, beta of {sorted(in_checkpoint - in_model) or 'no other layer'} that this "
        f"model has no CAReLU at, and none for its CAReLU layers {sorted(in_model - in_checkpoint) or '(none)'}. "
        f"It was written by: {describe(recorded_swaps(checkpoint))}. Run with the same CAReLUCallback settings, "
        "or load the trained model with caer_lightning.load_checkpoint(YourModule, path)."
    )


def _record_call_place(places: set[tuple[str, int, int]], module: nn.Module, args: Any) -> None:
    """Forward pre-hook: add the place that called `module` to `places`: the first frame outside torch.nn's call
    machinery ("file:line in Class.method", the call's bytecode offset, which tells two calls on one line apart)
    and the id of the object whose method made the call."""
    if torch.compiler.is_compiling():
        return
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename in _CALL_MACHINERY:
        frame = frame.f_back
    if frame is not None:
        code = frame.f_code
        where = f"{Path(code.co_filename).name}:{frame.f_lineno} in {getattr(code, 'co_qualname', code.co_name)}"
        places.add((where, frame.f_lasti, id(frame.f_locals.get("self"))))


_CALL_MACHINERY = {__file__, inspect.getfile(torch.nn.modules.module)}  # this hook, nn.Module.__call__


def _holder(optimizers: Sequence[torch.optim.Optimizer], params: Sequence[nn.Parameter]) -> int | None:
    """Index of the first optimizer holding any of `params`, or None."""
    ids = {id(p) for p in params}
    for index, optimizer in enumerate(optimizers):
        if any(id(p) in ids for group in optimizer.param_groups for p in group["params"]):
            return index
    return None


def _tensorboard_writers(trainer: pl.Trainer) -> list:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _check_positive(argument: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        accepted = "None or a finite number > 0" if allow_none else "a finite number > 0"
        raise ValueError(f"{argument}={value!r} is not supported; accepted values: {accepted}")
