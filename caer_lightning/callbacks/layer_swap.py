"""The swap part of CAReLUCallback: which activations become CAReLU, with which configuration, and which CAReLU
layers of the model the callback owns (trains, logs and records)."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from caer_lightning import _compat
from caer_lightning.activation import CAReLU
from caer_lightning.callbacks.interplay import in_frozen_part
from caer_lightning.swap import NameFilter, Patterns, Target, class_path, resolve_targets, swap_activations


class SwapRefused(ValueError):
    """The swap cannot be done as configured (the message says why and the way out)."""


class LayerSwap:
    """Swaps `targets` for CAReLU(**activation_config) and claims the CAReLU layers this swap owns: those it
    created, and CAReLUs already in the model (a model swapped beforehand) that `include`/`exclude` select and no
    other swap owns. Other swaps' layers are passed in as `others` (their public `owned` sets).

    A layer it created inside a frozen part of the model starts frozen too (unless `include` asked for it), so
    that fine-tuning callbacks unfreeze it with its block; `frozen` lists those until `report_frozen`.
    """

    def __init__(
        self,
        targets: Target | Sequence[Target],
        include: Patterns = None,
        exclude: Patterns = None,
        activation_config: dict[str, Any] | None = None,
        impl: str = "auto",
    ) -> None:
        self.targets = resolve_targets(targets)
        self.include, self.exclude = include, exclude
        self.selects = NameFilter(include, exclude)  # validates the regexes now
        self.activation_config = dict(activation_config or {})
        self.impl = impl
        CAReLU(**self.activation_config, impl=impl)  # validates every activation argument now
        self.created: set[int] = set()  # ids of the CAReLU modules this swap created
        self.claimed: set[int] = set()  # ids of the CAReLU modules this swap owns
        self.layers: dict[str, CAReLU] = {}  # the claimed layers of the model, by name, in model order
        self.frozen: list[str] = []  # layers claimed in frozen parts since the last report

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    @property
    def owned(self) -> set[int]:
        """Ids of every CAReLU this swap created or claimed (what other swaps leave alone)."""
        return self.created | self.claimed

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to redo this swap on a fresh model (plain values, safe to checkpoint)."""
        return dict(
            targets=[class_path(t) for t in self.targets], include=self.include, exclude=self.exclude,
            **self.activation_config,
        )

    def recipe(self) -> str:
        """The `swap_activations` call that makes this swap by hand (in `configure_model`, before sharding)."""
        arguments = [repr([class_path(t) for t in self.targets])]
        arguments += [f"{k}={v!r}" for k, v in (("include", self.include), ("exclude", self.exclude)) if v is not None]
        defaults = inspect.signature(CAReLU).parameters
        changed = {k: v for k, v in self.activation_config.items() if v != defaults[k].default}
        if changed:
            arguments.append(f"factory=lambda old: CAReLU({', '.join(f'{k}={v!r}' for k, v in changed.items())})")
        return f"caer_lightning.swap_activations(model, {', '.join(arguments)})"

    def new_layer(self, old: nn.Module) -> CAReLU:
        """The factory given to `swap_activations`."""
        module = CAReLU(**self.activation_config, impl=self.impl)
        self.created.add(id(module))
        return module

    def swap(
        self, model: nn.Module, copies: Iterable[nn.Module] = (), others: Collection[int] = (), final: bool = True
    ) -> list[str]:
        """Swap `model` and `copies` (weight-averaging copies; already swapped ones are left), then claim. Returns
        the names of the new modules. Before `final` (a `configure_model` still to come) a model with nothing to
        swap yet is not an error. Raises SwapRefused, also when the model was sharded with fully_shard (FSDP2)
        before this swap added layers to it: their α, β would be plain tensors no rank keeps in step."""
        sharded = _compat.sharded_modules(model)
        try:
            replaced = swap_activations(
                model, self.targets, include=self.include, exclude=self.exclude, factory=self.new_layer
            )
        except ValueError as error:
            if final or "matched no module" not in str(error):
                raise SwapRefused(f"CAReLUCallback: {error}") from None
            replaced = []
        for copy in copies:
            try:
                swap_activations(copy, self.targets, include=self.include, exclude=self.exclude, factory=self.new_layer)
            except ValueError:
                pass  # already swapped (taken after this swap)
        if sharded and replaced:
            per_channel = (
                " With params='channel', give each CAReLU num_channels=C there (or run one forward before "
                "fully_shard): fully_shard needs the shapes of alpha, beta, which a lazy layer creates at its first "
                "forward." if self.activation_config.get("params") == "channel" else ""
            )
            raise SwapRefused(
                f"CAReLUCallback: the model was sharded with fully_shard (FSDP2; sharded modules: "
                f"{[name or '<root>' for name in sharded][:4]}) before this callback swapped {replaced}, so their "
                "alpha, beta would be plain tensors that FSDP2 neither shards nor keeps in step across ranks. Swap "
                f"before sharding: in configure_model, call {self.recipe()} on the model before fully_shard; this "
                "callback then finds those CAReLU layers and trains and logs them (README: Sharded training)."
                + per_channel
            )
        self.claim(model, others)
        if final and not self.layers:
            held = [n for n, m in model.named_modules() if isinstance(m, CAReLU)]
            raise SwapRefused(
                f"CAReLUCallback(include={self.include!r}, exclude={self.exclude!r}) matched no module: every "
                f"CAReLU of the model ({held}) belongs to another CAReLUCallback of this Trainer. Give each "
                "callback include/exclude patterns that select different layers."
            )
        if replaced:
            rank_zero_info(f"CAReLUCallback: swapped {len(replaced)} activations for CAReLU: {replaced}")
        return replaced

    def claim(self, model: nn.Module, others: Collection[int] = ()) -> None:
        """Recompute `layers`: this swap's CAReLUs of `model`, leaving out those in `others`."""
        self.layers = {}
        for name, module in model.named_modules():
            key = id(module)
            if not isinstance(module, CAReLU) or key in others:
                continue
            if key in self.owned or self.selects(name):
                fresh = key in self.created and key not in self.claimed
                if fresh and self.include is None and in_frozen_part(model, name):
                    module.requires_grad_(False)
                    self.frozen.append(name)
                self.claimed.add(key)
                self.layers[name] = module
        self._warn_other_configuration()

    def report_frozen(self) -> None:
        """Say once which new layers sit in frozen parts of the model."""
        if self.frozen:
            rank_zero_info(
                f"CAReLUCallback: {self.frozen} sit in frozen parts of the model: their alpha, beta are frozen "
                "too and unfreeze with them (pass include=... to train them anyway)"
            )
            self.frozen = []

    def _warn_other_configuration(self) -> None:
        """Layers that were CAReLU before this swap keep their configuration: say so when it is not this swap's
        (the checkpoint records what each layer holds)."""
        def compared(layer: CAReLU) -> dict[str, Any]:  # num_channels is each layer's own (its input's)
            return {k: v for k, v in layer.layer_config().items() if k != "num_channels"}

        config = compared(CAReLU(**self.activation_config))
        other = {n: compared(m) for n, m in self.layers.items() if id(m) not in self.created}
        other = {n: c for n, c in other.items() if c != config}
        if other:
            holds = ", ".join(f"{n} ({', '.join(f'{k}={v!r}' for k, v in c.items())})" for n, c in other.items())
            rank_zero_warn(
                f"CAReLUCallback({', '.join(f'{k}={v!r}' for k, v in config.items())}): the model already holds "
                f"CAReLU layers configured otherwise, which keep their configuration: {holds}. Checkpoints record "
                "what each layer holds. To train with this configuration, swap a model that has no CAReLU yet."
            )
