"""Replace activation modules by CAReLU in place: `swap_activations(model, targets, ...)`."""

from __future__ import annotations

import functools
import importlib
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Union

import torch
from torch import nn

from caer_lightning.activation import CAReLU
from caer_lightning.callsites import (
    Forms,
    Site,
    functional_call_in_source,
    function_attributes,
    join_name,
    needs_tracing,
    rewrite,
    set_function_attribute,
    trace_own_forward,
    unique_name,
)

Target = Union[type, str]
Patterns = Union[str, Sequence[str], None]


def class_path(cls: type) -> str:
    """The import string of a class, e.g. "torch.nn.modules.activation.ReLU"."""
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_targets(targets: Target | Iterable[Target]) -> tuple[type[nn.Module], ...]:
    """Module classes from classes or import strings ("torch.nn.ReLU"); a ValueError names what failed."""
    if isinstance(targets, (str, type)):
        targets = (targets,)
    resolved = []
    for target in targets:
        cls = _import_class(target) if isinstance(target, str) else target
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(
                f"targets entry {target!r} is not an nn.Module class; accepted values: module classes or their "
                "import strings, e.g. torch.nn.ReLU or 'torch.nn.GELU'"
            )
        resolved.append(cls)
    if not resolved:
        raise ValueError("targets=() is empty; accepted values: one or more nn.Module classes or import strings")
    return tuple(resolved)


def _import_class(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"targets entry {path!r} does not import ({error}); accepted values: a full import path of an "
            "nn.Module class, e.g. 'torch.nn.ReLU' or 'timm.layers.activations.GELU'"
        ) from None


def compile_patterns(argument: str, patterns: Patterns) -> list[re.Pattern]:
    """Regexes from one string or a sequence of strings; a ValueError names the argument on a bad one."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as error:
            raise ValueError(
                f"{argument}={pattern!r} is not a valid regular expression ({error}); accepted values: "
                "None, a regex or a list of regexes searched in qualified module names"
            ) from None
    return compiled


def swap_activations(
    model: nn.Module,
    targets: Target | Iterable[Target] = (nn.ReLU,),
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    factory: Callable[[nn.Module], nn.Module] | None = None,
) -> list[str]:
    """Replace every activation call site of `targets` by `factory(old)` (default `CAReLU()`), in place.

    Call sites are: modules of a `targets` class; activation functions held as attributes
    (`nn.TransformerEncoderLayer.activation = F.relu`); functional calls in a module's own `forward`
    (`F.relu(x)`, `torch.relu(x)`, `x.relu()`, `F.gelu(x)`, ...: see `callsites.FUNCTIONAL_FORMS`); and each
    extra place where a module's forward calls the same activation module again. Every site gets its own module;
    `old` is the module replaced (for function sites, a new instance of the target class they stand for).
    New modules are named after the attribute, function or module they replace (`relu`, `relu_1`, ...).

    `include`/`exclude` are regexes searched (`re.search`) in the qualified names of the sites. Returns the names
    of the new modules, in model order. Idempotent: a CAReLU is never a target, and a model already swapped
    returns []. A module reachable under several names is replaced by one new module at each of them (so they
    keep sharing parameters, as the weights were) and a warning names them. Raises ValueError when nothing
    matches, or when a module that calls a target function cannot be traced by torch.fx (naming it and what to
    do instead).
    """
    classes = resolve_targets(targets)
    forms = Forms.of(classes)
    included, excluded = compile_patterns("include", include), compile_patterns("exclude", exclude)
    factory = factory or (lambda old: CAReLU())

    def selected(name: str) -> bool:
        return (not included or any(p.search(name) for p in included)) and not any(p.search(name) for p in excluded)

    def make(old: nn.Module, name: str, near: nn.Module) -> nn.Module:
        new = factory(old)
        if not isinstance(new, nn.Module):
            raise ValueError(f"factory returned {type(new).__name__}, not an nn.Module, for {name!r}")
        device = _device_of(near, model)
        return new.to(device) if device is not None else new

    new_modules: dict[int, nn.Module] = {}  # id(new) -> the module it replaced
    undo: list[Callable[[], None]] = []  # a refused swap leaves the model as it was
    try:
        _swap_sites(model, classes, forms, selected, make, new_modules, undo)
    except Exception:
        for step in reversed(undo):
            step()
        raise

    replaced = [name for name, module in model.named_modules() if id(module) in new_modules]
    if not replaced and not any(isinstance(m, CAReLU) for m in model.modules()):
        raise ValueError(_nothing_matched(model, classes, include, exclude))
    return replaced


def _swap_sites(
    model: nn.Module,
    classes: tuple[type, ...],
    forms: Forms,
    selected: Callable[[str], bool],
    make: Callable[[nn.Module, str, nn.Module], nn.Module],
    new_modules: dict[int, nn.Module],
    undo: list[Callable[[], None]],
) -> None:
    """The three kinds of call sites, in order: function attributes, modules, then calls traced in forward
    (which splits modules called at several places). Each change appends how to revert it to `undo`."""
    for name, owner, attribute, target in function_attributes(model, forms):
        if selected(name):
            new = make(target(), name, owner)
            undo.append(set_function_attribute(owner, attribute, new))
            new_modules[id(new)] = target()

    names_by_module: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_by_module.setdefault(id(module), []).append(name)
        modules[id(module)] = module
    for key, names in names_by_module.items():
        module = modules[key]
        if isinstance(module, CAReLU) or not isinstance(module, classes):
            continue
        names = [name for name in names if selected(name)]
        if not names:
            continue
        if names == [""]:
            raise ValueError(f"the model itself ({type(module).__name__}) is a target; swap inside a container")
        new = make(module, names[0], model.get_submodule(names[0].rpartition(".")[0]))
        for name in names:
            parent = model.get_submodule(name.rpartition(".")[0])
            child = name.rpartition(".")[2]
            setattr(parent, child, new)
            undo.append(functools.partial(setattr, parent, child, module))
        if len(names) > 1:
            warnings.warn(
                f"swap_activations: one {type(module).__name__} is reachable as {names}; all these names now hold "
                "the same new module, so they share one set of parameters",
                UserWarning,
                stacklevel=2,
            )
        new_modules[id(new)] = module

    for prefix, module in list(model.named_modules()):
        if needs_tracing(module):
            new_modules.update(_split_call_sites(module, prefix, forms, new_modules, selected, make, undo))


def _split_call_sites(
    module: nn.Module,
    prefix: str,
    forms: Forms,
    new_modules: dict[int, nn.Module],
    selected: Callable[[str], bool],
    make: Callable[[nn.Module, str, nn.Module], nn.Module],
    undo: list[Callable[[], None]],
) -> dict[int, nn.Module]:
    """Trace `module`'s own forward; give each functional call of a target, and each extra call of a module
    this swap created, a module of its own. Returns the new modules (id -> what they stand for)."""
    try:
        graph = trace_own_forward(module)
    except Exception as error:  # noqa: BLE001 - any tracing failure: fall back to reading the source
        form = functional_call_in_source(module, forms)
        if form is not None:
            raise ValueError(
                f"swap_activations: {_label(module, prefix)} calls {form}(...) in forward, but torch.fx cannot "
                f"trace that forward ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}), "
                f"so that call cannot get a CAReLU of its own. Give {type(module).__name__} an activation module "
                f"(e.g. self.act = nn.ReLU() called in forward), or leave it out with exclude="
                f"{re.escape(prefix) or '...'!r}."
            ) from None
        return {}

    sites, stands_for, calls, taken = [], {}, {}, set()
    for node in graph.nodes:
        target = forms.target_of(node)
        if target is not None:
            name = unique_name(module, str(getattr(node.target, "__name__", node.target)).rstrip("_"), taken)
            if selected(join_name(prefix, name)):
                old = stands_for[name] = target()
                sites.append(Site(node, name, lambda old=old, name=name: make(old, join_name(prefix, name), module)))
        elif node.op == "call_module" and id(module.get_submodule(node.target)) in new_modules:
            calls.setdefault(node.target, []).append(node)
    for target, nodes in calls.items():
        old = new_modules[id(module.get_submodule(target))]
        for node in nodes[1:]:  # the first call keeps the module; every further call gets its own
            name = unique_name(module, target.replace(".", "_"), taken)
            full = join_name(prefix, name)
            if selected(full):
                stands_for[name] = old
                sites.append(Site(node, name, lambda old=old, full=full: make(old, full, module)))
            else:  # this call site is left out: it keeps the original activation, under a name of its own
                sites.append(Site(node, name, lambda old=old: old))
    if not sites:
        return {}
    _check_mode_independent(module, prefix, graph)
    undo.append(rewrite(module, graph, sites))
    return {id(module.get_submodule(name)): old for name, old in stands_for.items()}


def _check_mode_independent(module: nn.Module, prefix: str, graph: fx.Graph) -> None:
    """The traced graph replaces forward in train and eval mode alike: refuse a forward that depends on it."""
    mode = module.training
    module.train(not mode)
    try:
        other = trace_own_forward(module)
    finally:
        module.train(mode)
    if other.python_code("self").src != graph.python_code("self").src:
        raise ValueError(
            f"swap_activations: {_label(module, prefix)}'s forward does different things in train and eval mode, "
            "so it cannot be replaced by one traced graph to give its activation calls modules of their own. "
            f"Give {type(module).__name__} activation modules called once each, or leave it out with exclude."
        )


def _label(module: nn.Module, prefix: str) -> str:
    return f"{prefix!r} ({type(module).__name__})" if prefix else f"the model ({type(module).__name__})"


def _device_of(near: nn.Module, model: nn.Module) -> torch.device | None:
    """The device of `near`'s own tensors, else the model's."""
    for owner in (near, model):
        for tensor in (*owner.parameters(), *owner.buffers()):
            return tensor.device
    return None


def _nothing_matched(model: nn.Module, classes: tuple[type, ...], include: Patterns, exclude: Patterns) -> str:
    leaves: dict[str, str] = {}
    for name, module in model.named_modules():
        if name and not list(module.children()) and not list(module.parameters(recurse=False)):
            leaves.setdefault(type(module).__name__, name)
    found = ", ".join(f"{cls} (e.g. {name!r})" for cls, name in list(leaves.items())[:12]) or "none"
    return (
        f"swap_activations matched no module: targets={[class_path(c) for c in classes]}, include={include!r}, "
        f"exclude={exclude!r}. Parameter-free leaf modules in the model: {found}. Pass the activation class "
        "you want replaced in targets (e.g. 'torch.nn.GELU') or widen include/exclude."
    )
