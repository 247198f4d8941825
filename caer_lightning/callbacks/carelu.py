r"""
CAReLUCallback
==============

Swaps activation modules for CAReLU when a run starts, gives their α, β an optimizer group of their own
(own lr, no weight decay by default) kept in step with every LR scheduler, and records the swap in checkpoints.

Example::

    from lightning.pytorch import Trainer
    from caer_lightning import CAReLUCallback

    trainer = Trainer(callbacks=[CAReLUCallback(targets=("torch.nn.ReLU",))])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from caer_lightning.activation import CAReLU
from caer_lightning.optim import extend_scheduler, move_to_own_group
from caer_lightning.swap import Patterns, Target, class_path, compile_patterns, resolve_targets, swap_activations

STATE_KIND = "caer_lightning.CAReLUCallback"


class CAReLUCallback(Callback):
    r"""Swap activations for CAReLU and train their parameters in their own optimizer group.

    Args:
        targets: activation classes (or import strings) to replace.
        include: regex(es) searched in qualified module names; only matching modules are replaced.
        exclude: regex(es); matching modules are left alone.
        variant, reduction, K, alpha_init, beta_init, eps: the CAReLU configuration (see ``CAReLU``).
        lr: base learning rate of the ``carelu`` group; default ``lr_scale`` × the lr of the group the
            parameters came from (group 0 if none held them).
        lr_scale: multiplier used when ``lr`` is None.
        weight_decay: weight decay of the ``carelu`` group (0.0: decay pulls β, and so the scale, toward 0).
        log_every_n_steps: logging cadence of the dashboards; None uses the Trainer's.
        log_histograms: whether to log histograms of p per layer.

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
        lr_scale: float = 1.0,
        weight_decay: float = 0.0,
        log_every_n_steps: int | None = None,
        log_histograms: bool = True,
    ) -> None:
        self.targets = resolve_targets(targets)
        self.include, self.exclude = include, exclude
        compile_patterns("include", include), compile_patterns("exclude", exclude)
        self.activation_config = dict(
            variant=variant, reduction=reduction, K=K, alpha_init=alpha_init, beta_init=beta_init, eps=eps
        )
        CAReLU(**self.activation_config)  # validates every activation argument now, before any training
        _check_positive("lr", lr, allow_none=True)
        _check_positive("lr_scale", lr_scale)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} is not supported; accepted values: a number >= 0")
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 1):
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps!r} is not supported; accepted values: None or an int >= 1"
            )
        self.lr, self.lr_scale, self.weight_decay = lr, lr_scale, weight_decay
        self.log_every_n_steps, self.log_histograms = log_every_n_steps, log_histograms
        self.swapped: list[str] = []
        self._call_counts: Counter[str] | None = None  # calls per CAReLU in the first training step
        self._probe_handles: list[RemovableHandle] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            targets=[class_path(t) for t in self.targets], include=self.include, exclude=self.exclude
        )

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to redo this swap on a fresh model (plain values, safe to checkpoint)."""
        return dict(
            targets=[class_path(t) for t in self.targets], include=self.include, exclude=self.exclude,
            **self.activation_config,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Swap before checkpoint weights are restored, DDP/FSDP wrap the model and optimizers are built."""
        try:
            replaced = swap_activations(
                pl_module, self.targets, include=self.include, exclude=self.exclude,
                factory=lambda old: CAReLU(**self.activation_config),
            )
        except ValueError as error:
            raise MisconfigurationException(f"CAReLUCallback: {error}") from None
        keep = set(replaced) | set(self.swapped)  # empty when the model came already swapped: take them all
        self.swapped = [n for n, m in pl_module.named_modules() if isinstance(m, CAReLU) and (n in keep or not keep)]
        if replaced:
            rank_zero_info(f"CAReLUCallback: swapped {len(replaced)} activations for CAReLU: {replaced}")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Move α, β into a ``carelu`` group of each optimizer that holds them and extend its schedulers."""
        modules = [pl_module.get_submodule(name) for name in self.swapped]
        params = [p for m in modules for p in (m.alpha, m.beta)]
        if not trainer.optimizers:
            rank_zero_warn("CAReLUCallback: the Trainer has no optimizer, so CAReLU's alpha and beta won't train")
            return
        by_optimizer: dict[int, list[nn.Parameter]] = {}
        for param in params:
            index = next(
                (i for i, opt in enumerate(trainer.optimizers)
                 if any(p is param for g in opt.param_groups for p in g["params"])),
                0,  # held by no optimizer (e.g. LightningCLI built it before the swap): the first one
            )
            by_optimizer.setdefault(index, []).append(param)
        for index, owned in by_optimizer.items():
            optimizer = trainer.optimizers[index]
            new = move_to_own_group(
                optimizer, owned, lr=self.lr, lr_scale=self.lr_scale, weight_decay=self.weight_decay
            )
            for config in trainer.lr_scheduler_configs:
                if config.scheduler.optimizer is optimizer and not extend_scheduler(config.scheduler, new):
                    rank_zero_warn(
                        f"CAReLUCallback: unknown LR scheduler {type(config.scheduler).__qualname__}; the 'carelu' "
                        "group was appended to its per-group lists (base_lrs, ...) where present. Check that "
                        "it schedules that group (LearningRateMonitor shows it as lr-<optimizer>/carelu)."
                    )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        """On the first batch, count calls per CAReLU until backward, to find modules used at several sites."""
        if self._call_counts is not None or self._probe_handles:
            return
        self._call_counts = Counter()
        for name in self.swapped:
            hook = lambda module, args, name=name: self._call_counts.update([name])
            self._probe_handles.append(pl_module.get_submodule(name).register_forward_pre_hook(hook))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if not self._probe_handles:
            return
        for handle in self._probe_handles:
            handle.remove()
        self._probe_handles = []
        counts = self._call_counts
        least = min((counts[n] for n in self.swapped), default=0)
        shared = {n: counts[n] for n in self.swapped if counts[n] > least}
        if shared:
            rank_zero_warn(
                f"CAReLUCallback: these activations ran more often in the first step than the others ({least}x): "
                f"{shared}. Each is probably one module called at several places in forward (torchvision's ResNet "
                "reuses `relu`), so those places share one alpha and beta. Give each place its own activation "
                "module if they should learn separately."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "config": self.config, "swapped": list(self.swapped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("config") != self.config:
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint was made with {state_dict.get('config')}, this run uses "
                f"{self.config}; continuing with this run's configuration"
            )
        if self.swapped and state_dict.get("swapped") not in (None, self.swapped):
            rank_zero_warn(
                f"CAReLUCallback: the checkpoint swapped {state_dict.get('swapped')}, this run swapped {self.swapped}"
            )


def _check_positive(argument: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        accepted = "None or a number > 0" if allow_none else "a number > 0"
        raise ValueError(f"{argument}={value!r} is not supported; accepted values: {accepted}")
