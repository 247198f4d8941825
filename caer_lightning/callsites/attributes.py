"""Activation functions held as attributes (`nn.TransformerEncoderLayer.activation = F.relu`, Hugging Face's
`GELUActivation.act = F.gelu`): each becomes a module registered under the same name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from caer_lightning import _compat
from caer_lightning.callsites.forms import Forms


def function_attributes(model: nn.Module, forms: Forms) -> list[tuple[str, nn.Module, str, type[nn.Module]]]:
    """(qualified name, owner, attribute, target class) of every activation function held as an attribute."""
    found = []
    for prefix, module in model.named_modules():
        for attribute, value in vars(module).items():
            if callable(value) and not isinstance(value, nn.Module):
                target = forms.function_target(value)
                if target is not None:
                    found.append((f"{prefix}.{attribute}" if prefix else attribute, module, attribute, target))
    return found


def set_function_attribute(owner: nn.Module, attribute: str, new: nn.Module) -> Callable[[], None]:
    """Replace a function attribute by a module (registered under the same name); turn off fast paths that
    would run a built-in activation instead of it. Returns how to undo it."""
    function, flag = owner.__dict__[attribute], _compat.fast_path_flag(owner)
    delattr(owner, attribute)
    owner.add_module(attribute, new)
    if flag is not None:
        _compat.set_fast_path_flag(owner, 0)

    def undo() -> None:
        delattr(owner, attribute)
        setattr(owner, attribute, function)
        if flag is not None:
            _compat.set_fast_path_flag(owner, flag)

    return undo
