"""The first training step's probe of where each CAReLU is called from: one module called at several places the
swap could not tell apart (calls from code it cannot read, one module in two containers) shares its α, β between
them, and the user is told (a loop calls it from one place, however often, and is not reported)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
from torch.utils.hooks import RemovableHandle

from caer_lightning import _compat

Place = tuple[str, int, int]  # "file:line in Class.method", bytecode offset, id of the calling object


class CallProbe:
    """Forward pre-hooks on the layers from `start` until `finish` (the first backward)."""

    def __init__(self) -> None:
        self.places: dict[str, set[Place]] | None = None  # None: not probed yet
        self.handles: list[RemovableHandle] = []

    @property
    def running(self) -> bool:
        return bool(self.handles)

    def start(self, layers: dict[str, nn.Module]) -> None:
        self.places = {}
        for name, module in layers.items():
            hook = functools.partial(record_call_place, self.places.setdefault(name, set()))
            self.handles.append(module.register_forward_pre_hook(hook))

    def finish(self) -> dict[str, list[str]]:
        """Remove the hooks; warn about, and return, the layers called from several places."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        shared = {n: sorted({place[0] for place in places}) for n, places in (self.places or {}).items()
                  if len(places) > 1}
        if shared:
            described = "; ".join(f"{name} from {', '.join(places)}" for name, places in shared.items())
            rank_zero_warn(
                f"CAReLUCallback: in the first step, these activations were called from several places: {described}. "
                "Each is one module called at places the swap could not tell apart (calls from code it cannot "
                "read, or one module in two containers), so those places share one alpha and beta. Give each "
                "place its own activation module if they should learn separately."
            )
        return shared


def record_call_place(places: set[Place], module: nn.Module, args: Any) -> None:
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


_CALL_MACHINERY = {__file__, *_compat.module_call_files()}  # this hook, nn.Module.__call__
