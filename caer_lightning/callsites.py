"""Activation call sites that are not modules of their own: functions held as attributes, functional calls in
`forward` (`F.relu(x)`, `torch.relu(x)`, `x.relu()`), and one module called at several places.

Each module whose own `forward` holds such a call is traced with torch.fx (its submodules kept as leaves, so
only the smallest module that makes the call is traced), and the call is replaced by a module of its own.
The module keeps its class, attributes and state-dict names; its `forward` becomes the rewritten graph.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from caer_lightning.activation import CAReLU

# The functional forms of activation classes: functions (call_function targets) and Tensor methods.
FUNCTIONAL_FORMS: dict[type[nn.Module], tuple[tuple[Callable, ...], tuple[str, ...]]] = {
    nn.ReLU: ((F.relu, F.relu_, torch.relu, torch.relu_), ("relu", "relu_")),
    nn.ReLU6: ((F.relu6,), ()),
    nn.GELU: ((F.gelu,), ()),
    nn.SiLU: ((F.silu,), ()),
    nn.LeakyReLU: ((F.leaky_relu, F.leaky_relu_), ()),
    nn.ELU: ((F.elu, F.elu_), ()),
    nn.Mish: ((F.mish,), ()),
    nn.Hardswish: ((F.hardswish,), ()),
}
_IN_PLACE = {F.relu_, torch.relu_, F.leaky_relu_, F.elu_}
# Layers whose fast path runs a built-in activation when this flag is set (nn.TransformerEncoderLayer, ...).
_FAST_PATH_FLAG = "activation_relu_or_gelu"


@dataclass(frozen=True)
class Forms:
    """Which functions and Tensor methods stand for which target class."""

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

    def target_of(self, node: fx.Node) -> type[nn.Module] | None:
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None


class GraphForward:
    """A module's `forward` after the swap: its traced graph, with one module per activation call site.

    The graph module shares the module's own `_modules`, `_parameters` and `_buffers` dicts, so it always calls
    the module's current children (even after they are replaced, e.g. wrapped by torch.compile or FSDP), and it
    is registered nowhere: state dicts, `parameters()` and `named_modules()` are the module's own.
    """

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        graph_module = fx.GraphModule(module, graph, class_name=f"{type(module).__name__}Forward")
        for shared in ("_modules", "_parameters", "_buffers"):
            object.__setattr__(graph_module, shared, module.__dict__[shared])
        self.graph_module = graph_module

    def __call__(self, *args, **kwargs):
        return self.graph_module.forward(*args, **kwargs)


def is_rewritten(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), GraphForward)


def function_attributes(model: nn.Module, forms: Forms) -> list[tuple[str, nn.Module, str, type[nn.Module]]]:
    """(qualified name, owner, attribute, target class) of every activation function held as an attribute
    (`nn.TransformerEncoderLayer.activation = F.relu`, Hugging Face's `GELUActivation.act`)."""
    found = []
    for prefix, module in model.named_modules():
        for attribute, value in vars(module).items():
            if callable(value) and not isinstance(value, nn.Module):
                try:
                    target = forms.functions.get(value)
                except TypeError:  # unhashable callable
                    target = None
                if target is not None:
                    found.append((join_name(prefix, attribute), module, attribute, target))
    return found


def set_function_attribute(owner: nn.Module, attribute: str, new: nn.Module) -> Callable[[], None]:
    """Replace a function attribute by a module (registered under the same name); turn off fast paths that
    would run a built-in activation instead of it. Returns how to undo it."""
    function, flag = owner.__dict__[attribute], owner.__dict__.get(_FAST_PATH_FLAG)
    delattr(owner, attribute)
    owner.add_module(attribute, new)
    if flag is not None:
        setattr(owner, _FAST_PATH_FLAG, 0)

    def undo() -> None:
        delattr(owner, attribute)
        setattr(owner, attribute, function)
        if flag is not None:
            setattr(owner, _FAST_PATH_FLAG, flag)

    return undo


class _OwnForwardTracer(fx.Tracer):
    """Traces a module's own forward: every submodule is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace_own_forward(module: nn.Module) -> fx.Graph:
    """The graph of `module.forward` with its submodules as leaves; the module's attributes are restored after
    (a forward that stores something on `self` would otherwise keep a tracing proxy)."""
    saved = dict(module.__dict__)
    try:
        return _OwnForwardTracer().trace(module)
    finally:
        module.__dict__.clear()
        module.__dict__.update(saved)


def functional_call_in_source(module: nn.Module, forms: Forms) -> str | None:
    """A functional activation call written in the module's forward source (for modules fx cannot trace)."""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return None
    names = {getattr(f, "__name__", "") for f in forms.functions} - {""}
    for name in sorted(names):
        match = re.search(rf"\b(?:F|functional|torch)\.{re.escape(name)}\s*\(", source)
        if match:
            return match.group(0).rstrip("( ")
    for name in sorted(forms.methods):
        match = re.search(rf"\.{re.escape(name)}\(\s*\)", source)
        if match:
            return match.group(0)
    return None


def needs_tracing(module: nn.Module) -> bool:
    """Modules whose own forward may hold call sites: not PyTorch's own classes, not CAReLU, not done yet."""
    forward_owner = next((c for c in type(module).__mro__ if "forward" in vars(c)), nn.Module)
    return not (
        isinstance(module, CAReLU) or is_rewritten(module) or forward_owner.__module__.startswith("torch.")
        or forward_owner is nn.Module
    )


@dataclass
class Site:
    """One call to rewrite: the graph node, the name of its new module, and how to make that module."""

    node: fx.Node
    name: str
    make: Callable[[], nn.Module]


def rewrite(module: nn.Module, graph: fx.Graph, sites: list[Site]) -> Callable[[], None]:
    """Give every site its own module (added to `module`) and make the rewritten graph `module`'s forward.
    Returns how to undo it."""
    for site in sites:
        new = site.make()
        module.add_module(site.name, new)
        node = site.node
        source = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
        with graph.inserting_before(node):
            call = graph.call_module(site.name, args=(source,))
        node.replace_all_uses_with(call)
        if node.op != "call_module" and _in_place(node):
            _redirect_later_uses(graph, source, call)
        graph.erase_node(node)
    graph.lint()
    object.__setattr__(module, "forward", GraphForward(module, graph))

    def undo() -> None:
        del module.__dict__["forward"]
        for site in sites:
            delattr(module, site.name)

    return undo


def unique_name(module: nn.Module, base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ..., whichever neither the module nor `taken` uses yet (added to it)."""
    name, index = base, 0
    while hasattr(module, name) or name in taken:
        index += 1
        name = f"{base}_{index}"
    taken.add(name)
    return name


def _in_place(node: fx.Node) -> bool:
    if node.op == "call_method":
        return str(node.target).endswith("_")
    inplace = node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 and node.target is F.relu else False)
    return node.target in _IN_PLACE or inplace is True


def _redirect_later_uses(graph: fx.Graph, source: fx.Node, call: fx.Node) -> None:
    """An in-place activation changed its input: later readers of that input read the new module's output."""
    after = False
    for node in graph.nodes:
        if node is call:
            after = True
            continue
        if after and source in node.all_input_nodes:
            node.replace_input_with(source, call)


def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
