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
from caer_lightning.callsites.attributes import function_attributes, set_function_attribute
from caer_lightning.callsites.forms import Forms
from caer_lightning.callsites.split import split_call_sites
from caer_lightning.hf_record import record_swaps

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


class NameFilter:
    """`include`/`exclude` regexes (one string or a list) searched (`re.search`) in qualified module names: a name
    is selected when an include pattern matches it (or there is none) and no exclude pattern does."""

    def __init__(self, include: Patterns = None, exclude: Patterns = None) -> None:
        self.include, self.exclude = include, exclude
        self._included = compile_patterns("include", include)
        self._excluded = compile_patterns("exclude", exclude)

    def __call__(self, name: str) -> bool:
        return (not self._included or any(p.search(name) for p in self._included)) and not any(
            p.search(name) for p in self._excluded
        )


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
    (`nn.TransformerEncoderLayer.activation = F.relu`); functional calls in the methods a module runs
    (`F.relu(x)`, `torch.relu(x)`, `x.relu()`, `F.gelu(x)`, ...: see `callsites.forms`); and each further place
    where the same activation module is called again. Every site gets its own module; `old` is the module
    replaced (for function sites, a new instance of the target class they stand for). New modules are named
    after the attribute, function or module they replace (`relu`, `relu_1`, ...). Call sites are found in the
    source and only those call expressions are rewritten: the model's own code keeps running (see
    `callsites.split`); a call that cannot be rewritten faithfully stays as it is, with a warning naming it.

    `include`/`exclude` are regexes searched (`re.search`) in the qualified names of the sites. Returns the names
    of the new modules, in model order. Idempotent: a CAReLU is never a target, and a model already swapped
    returns []. A module registered under several names gets a new module at each (each is a place it is called
    from). Raises ValueError when nothing matches, or when a target module holds parameters or buffers (a
    parameter-free activation would drop them).
    """
    classes = resolve_targets(targets)
    forms = Forms.of(classes)
    selected = NameFilter(include, exclude)
    factory = factory or (lambda old: CAReLU())

    def make(old: nn.Module, name: str, near: nn.Module) -> nn.Module:
        new = factory(old)
        if not isinstance(new, nn.Module):
            raise ValueError(f"factory returned {type(new).__name__}, not an nn.Module, for {name!r}")
        if isinstance(new, CAReLU):
            new.site_name = name
        device = _device_of(near, model)
        return new.to(device) if device is not None else new

    new_modules: dict[int, nn.Module] = {}  # id(new) -> the module it replaced
    undo: list[Callable[[], None]] = []  # a refused swap leaves the model as it was
    notes: list[str] = []  # calls left as they are, and why
    try:
        _swap_sites(model, classes, forms, selected, make, new_modules, undo, notes)
    except Exception:
        for step in reversed(undo):
            step()
        raise

    replaced = {name: class_path(type(new_modules[id(m)])) for name, m in model.named_modules() if id(m) in new_modules}
    if not replaced and not any(isinstance(m, CAReLU) for m in model.modules()):
        raise ValueError(_nothing_matched(model, classes, include, exclude))
    for note in notes:
        warnings.warn(f"swap_activations: {note}", UserWarning, stacklevel=2)
    record_swaps(model, replaced)  # Hugging Face models: save_pretrained keeps the record (hf_record)
    return list(replaced)


def _swap_sites(
    model: nn.Module,
    classes: tuple[type, ...],
    forms: Forms,
    selected: Callable[[str], bool],
    make: Callable[[nn.Module, str, nn.Module], nn.Module],
    new_modules: dict[int, nn.Module],
    undo: list[Callable[[], None]],
    notes: list[str],
) -> None:
    """The three kinds of call sites, in order: function attributes, modules, then calls found in the source of
    the methods modules run (which splits modules called at several places). Each change appends how to revert
    it to `undo`."""
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
        _check_parameter_free(module, names[0])
        for name in names:  # a module registered at several places is called from each: one new module each
            parent = model.get_submodule(name.rpartition(".")[0])
            child = name.rpartition(".")[2]
            new = make(module, name, parent)
            setattr(parent, child, new)
            undo.append(functools.partial(setattr, parent, child, module))
            new_modules[id(new)] = module

    new_modules.update(split_call_sites(model, classes, new_modules, selected, make, undo, notes))


def _check_parameter_free(module: nn.Module, name: str) -> None:
    """A target is replaced by a parameter-free activation: refuse one whose parameters or buffers would be lost."""
    held = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    if held:
        raise ValueError(
            f"targets entry {class_path(type(module))}: {name!r} holds parameters or buffers ({', '.join(held[:6])}"
            f"{', ...' if len(held) > 6 else ''}) that replacing it would drop; accepted targets: activation classes "
            "without parameters or buffers (e.g. torch.nn.ReLU, torch.nn.GELU). To swap the activation inside such "
            "a layer (timm's BatchNormAct2d), target the activation class it calls."
        )


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
