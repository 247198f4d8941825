"""Which functions and Tensor methods stand for which activation class: `F.relu`, `torch.relu`, `x.relu()` for
`nn.ReLU`, `F.gelu` for `nn.GELU`, ..., and how a call of one names its input and whether it works in place."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

# The functional forms of activation classes: functions (with their in-place twins) and Tensor method names.
FUNCTIONAL_FORMS: dict[type[nn.Module], tuple[tuple[Callable, ...], tuple[str, ...]]] = {
    nn.ReLU: ((F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_), ("relu", "relu_")),
    nn.ReLU6: ((F.relu6,), ()),
    nn.GELU: ((F.gelu,), ()),
    nn.SiLU: ((F.silu,), ()),
    nn.LeakyReLU: ((F.leaky_relu, F.leaky_relu_), ()),
    nn.ELU: ((F.elu, F.elu_), ()),
    nn.Mish: ((F.mish,), ()),
    nn.Hardswish: ((F.hardswish,), ()),
}
IN_PLACE_FUNCTIONS = frozenset({F.relu_, torch.relu_, torch.Tensor.relu_, F.leaky_relu_, F.elu_})
# Tensor methods whose result may share the receiver's storage: an in-place call on it changes the receiver.
VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose", "t",
    "permute", "movedim", "narrow", "select", "split", "chunk", "unbind", "expand", "expand_as", "as_strided",
    "detach", "contiguous", "unfold", "diagonal", "swapaxes", "swapdims", "mT", "T", "real", "imag", "view_as_real",
    "to", "type_as", "float", "half", "bfloat16", "double",
})

# Whether a call works in place: yes, no, or only known when it runs (`inplace=self.inplace`).
InPlace = Union[bool, ast.expr]


@dataclass(frozen=True)
class Forms:
    """The functions and Tensor methods that stand for the target classes."""

    functions: dict[Callable, type[nn.Module]]
    methods: dict[str, type[nn.Module]]

    @classmethod
    def of(cls, classes: Iterable[type[nn.Module]]) -> Forms:
        functions, methods = {}, {}
        for target in classes:
            found_functions, found_methods = FUNCTIONAL_FORMS.get(target, ((), ()))
            functions.update({f: target for f in found_functions})
            methods.update({m: target for m in found_methods})
        return cls(functions, methods)

    def function_target(self, value: object) -> type[nn.Module] | None:
        """The target class `value` is a functional form of, or None."""
        try:
            return self.functions.get(value)  # type: ignore[call-overload]
        except TypeError:  # unhashable
            return None

    @property
    def names(self) -> frozenset[str]:
        """Every name a call of a form can be written with (`relu`, `relu_`, `gelu`, ...)."""
        return frozenset({getattr(f, "__name__", "") for f in self.functions} | set(self.methods)) - {""}


def call_input(call: ast.Call) -> ast.expr | None:
    """The expression a functional activation call applies to: its first positional argument or `input=`."""
    for index, argument in enumerate(call.args):
        if isinstance(argument, ast.Starred):
            return None
        if index == 0:
            return argument
    return next((k.value for k in call.keywords if k.arg == "input"), None)


def in_place(function: Callable, call: ast.Call) -> InPlace:
    """Whether `call` (a call of `function`) works in place: True, False, or the expression that decides it."""
    if function in IN_PLACE_FUNCTIONS:
        return True
    flag = next((k.value for k in call.keywords if k.arg == "inplace"), None)
    if flag is None:
        position = _inplace_position(function)
        if position is not None and len(call.args) > position:
            flag = call.args[position]
    if flag is None:
        return False
    if isinstance(flag, ast.Constant):
        return bool(flag.value)
    return flag


def _inplace_position(function: Callable) -> int | None:
    """The positional index of an `inplace` parameter (F.relu(input, inplace=False): 1), or None."""
    try:
        parameters = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # builtins without a signature take no `inplace`
        return None
    return parameters.index("inplace") if "inplace" in parameters else None
