"""Replace activation modules by CAReLU in place: `swap_activations(model, targets, ...)`."""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Union

import torch
from torch import nn

from caer_lightning.activation import CAReLU

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
    """Replace every module of a `targets` class by `factory(old)` (default `CAReLU()`), in place.

    `include`/`exclude` are regexes searched (`re.search`) in qualified module names. Returns the names
    replaced, in model order. Idempotent: a CAReLU is never a target, and a model already swapped returns [].
    A module reachable under several names is replaced by one new module at each of them (so α, β stay
    shared, as the weights were) and a warning names them. Raises ValueError when nothing matches.
    """
    classes = resolve_targets(targets)
    included, excluded = compile_patterns("include", include), compile_patterns("exclude", exclude)
    factory = factory or (lambda old: CAReLU())

    def selected(name: str) -> bool:
        return (not included or any(p.search(name) for p in included)) and not any(p.search(name) for p in excluded)

    names_by_module: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_by_module.setdefault(id(module), []).append(name)
        modules[id(module)] = module

    replaced = []
    for key, names in names_by_module.items():
        module = modules[key]
        if isinstance(module, CAReLU) or not isinstance(module, classes):
            continue
        names = [name for name in names if selected(name)]
        if not names:
            continue
        if names == [""]:
            raise ValueError(f"the model itself ({type(module).__name__}) is a target; swap inside a container")
        new = factory(module)
        if not isinstance(new, nn.Module):
            raise ValueError(f"factory returned {type(new).__name__}, not an nn.Module, for {names[0]!r}")
        device = _device_near(model, module, names[0])
        if device is not None:
            new = new.to(device)
        for name in names:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        if len(names) > 1:
            warnings.warn(
                f"swap_activations: one {type(module).__name__} is reachable as {names}; all these names now hold "
                "the same new module, so they share one set of parameters",
                UserWarning,
                stacklevel=2,
            )
        replaced.append(names[0])

    if not replaced and not any(isinstance(m, CAReLU) for m in model.modules()):
        raise ValueError(_nothing_matched(model, classes, include, exclude))
    return replaced


def _device_near(model: nn.Module, module: nn.Module, name: str) -> torch.device | None:
    """The device of the module's own tensors, else its parent's, else the model's."""
    parent = model.get_submodule(name.rpartition(".")[0])
    for owner in (module, parent, model):
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
