"""Give every activation call site of a model a module of its own, by rewriting call expressions in the source
of the methods that make them.

A call site is a place in the source. The methods read are `forward` (and Lightning's `*_step`) of every module
whose class is not PyTorch's own, and the methods those call (`self.forward_features(x)`,
`self.backbone.forward_head(x)`). In them:
- each functional call (`F.relu(x)`, `torch.relu(x)`, `x.relu()`) gets a new module (`relu`, `relu_1`, ...);
- a module this swap put in that is called at several places keeps its name at the first, and each further
  place gets a new module (`relu_1`, `block_act`, ...), in the module whose method makes the call; places that
  never run in the same call (the arms of one `if`, see `branches`) share one;
- an in-place call on a name (`F.relu_(x)`) assigns its result to that name, so later readers see it.
The module keeps its class; each rewritten method becomes an instance attribute running the method's own source
with only those call expressions changed. Calls that cannot be rewritten faithfully stay as they are, and one
note per module names them and says why.
"""

from __future__ import annotations

import inspect
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from caer_lightning.activation import CAReLU
from caer_lightning.callsites.branches import exclusive
from caer_lightning.callsites.finder import FoundCall, dotted_call, find_calls
from caer_lightning.callsites.forms import Forms
from caer_lightning.callsites.rewrite import Rewrite, SiteMethod, rewritten
from caer_lightning.callsites.source import SourceUnavailable, read_method

# Methods a model runs: `forward`, and a LightningModule's steps (read when the class defines them).
ROOT_METHODS = ("forward", "training_step", "validation_step", "test_step", "predict_step")
# The ATen operators of the functional forms, to look for in TorchScript code.
_SCRIPT_OPERATORS = {
    nn.ReLU: ("aten::relu",), nn.ReLU6: ("aten::relu6", "aten::hardtanh"), nn.GELU: ("aten::gelu",),
    nn.SiLU: ("aten::silu",), nn.LeakyReLU: ("aten::leaky_relu",), nn.ELU: ("aten::elu",),
    nn.Mish: ("aten::mish",), nn.Hardswish: ("aten::hardswish",),
}

Make = Callable[[nn.Module, str, nn.Module], nn.Module]  # (what it stands for, qualified name, owner) -> module


@dataclass
class ScannedMethod:
    """A method of a module that may run, and the activation calls in it not rewritten yet."""

    owner: type  # the class whose __dict__ holds the function
    name: str
    calls: list[FoundCall]


@dataclass
class ScannedModule:
    """A module whose methods hold activation calls, or whose calls cannot be read."""

    prefix: str
    module: nn.Module
    methods: list[ScannedMethod] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # methods whose calls cannot be read, and why


def split_call_sites(
    model: nn.Module,
    classes: tuple[type[nn.Module], ...],
    swapped: dict[int, nn.Module],
    selected: Callable[[str], bool],
    make: Make,
    undo: list[Callable[[], None]],
    notes: list[str],
) -> dict[int, nn.Module]:
    """Rewrite the activation call sites of `model` (see the module docstring). `swapped` maps the ids of the
    modules this swap already put in (modules, function attributes) to what they replaced. Returns the new
    modules (id -> what each stands for); appends how to revert each change to `undo`, and what the user should
    be told (calls left as they are) to `notes`."""
    sites = _Sites(swapped, selected, make, undo)
    for entry in _scan(model, Forms.of(classes), classes, swapped, notes):
        taken: set[str] = set()  # names given in this module
        plans: dict[tuple[type, str], list[Rewrite]] = {}
        left: list[str] = list(entry.problems)
        for method in entry.methods:
            for call in method.calls:
                plan = sites.module_call if call.kind == "module" else sites.functional_call
                rewrite = plan(entry, method, call, taken, left)
                if rewrite is not None:
                    plans.setdefault((method.owner, method.name), []).append(rewrite)
        for (owner, name), rewrites in plans.items():
            sites.install(entry, owner, name, rewrites, left)
        if left:
            notes.append(
                f"in {_label(entry.module, entry.prefix)}, these activation calls stay as they are (they keep "
                f"computing the original activation): {'; '.join(left)}. Give them an activation module (e.g. "
                "self.act = nn.ReLU() called in forward), or keep them out with exclude."
            )
    return sites.new_modules


@dataclass
class _Place:
    """The calls of one module (put in by this swap) that call one module after the swap: `module` (a path from
    `self`: the original attribute) or a new one of the calling module's."""

    caller: nn.Module
    method: ScannedMethod
    module: str
    calls: list[FoundCall]

    def joins(self, caller: nn.Module, method: ScannedMethod, call: FoundCall) -> bool:
        """Whether `call` can share this place's module: same method, and never run with any of its calls."""
        return caller is self.caller and method is self.method and all(exclusive(c.path, call.path) for c in self.calls)

    def rewrite(self, call: FoundCall) -> Rewrite | None:
        """Call this place's module (nothing to change for the original, unless the call works in place)."""
        original = self.module == ".".join(dotted_call(call.node)[1:])
        if original and call.rebind is None:
            return None
        return Rewrite(call.position, "rename", self.module, call.rebind, call.rebind_if)


@dataclass
class _Sites:
    """Decides what each call becomes, and registers the modules it will call."""

    swapped: dict[int, nn.Module]
    selected: Callable[[str], bool]
    make: Make
    undo: list[Callable[[], None]]
    new_modules: dict[int, nn.Module] = field(default_factory=dict)
    places: dict[int, list[_Place]] = field(default_factory=dict)  # id(module put in) -> the places calling it

    def module_call(
        self, entry: ScannedModule, method: ScannedMethod, call: FoundCall, taken: set[str], left: list[str]
    ) -> Rewrite | None:
        """A call of a module this swap put in: the first place keeps it; each further place gets its own (or,
        when `exclude` leaves that place out, the activation it replaced), under a new name in the caller; a
        place that never runs in the same call as the others of a module (another arm of an `if`) shares it."""
        places = self.places.setdefault(id(call.module), [])
        for place in places:
            if place.joins(entry.module, method, call):
                place.calls.append(call)
                return place.rewrite(call)
        if not places:
            path = ".".join(dotted_call(call.node)[1:])
            places.append(_Place(entry.module, method, path, [call]))
            return places[0].rewrite(call)
        name = _unique_name(entry.module, call.base_name, taken)
        full = _join(entry.prefix, name)
        old = self.swapped[id(call.module)]
        self.add(entry, name, self.make(old, full, entry.module) if self.selected(full) else old, old)
        places.append(_Place(entry.module, method, name, [call]))
        return places[-1].rewrite(call)

    def functional_call(
        self, entry: ScannedModule, method: ScannedMethod, call: FoundCall, taken: set[str], left: list[str]
    ) -> Rewrite | None:
        """A functional call or Tensor method: a new module of its own, unless `exclude` leaves it out or it
        cannot be rewritten faithfully (then it stays as written and the warning names it)."""
        name = _unique_name(entry.module, call.base_name, taken)  # named even when left out: names stay stable
        full = _join(entry.prefix, name)
        if not self.selected(full):
            return None
        if call.problem is not None:
            left.append(f"line {call.position[0]}, `{call.text}`: {call.problem}")
            return None
        old = call.target()
        self.add(entry, name, self.make(old, full, entry.module), old)
        kind = "call" if call.kind == "function" else "route"
        return Rewrite(call.position, kind, name, call.rebind, call.rebind_if)

    def install(self, entry: ScannedModule, owner: type, name: str, rewrites: list[Rewrite], left: list[str]) -> None:
        """Make `module.<name>` the method with `rewrites` (and those of an earlier swap) applied. A rewrite that
        does not compile (e.g. assigning to a comprehension's own variable) is dropped and named in `left`."""
        module = entry.module
        before = module.__dict__.get(name)
        earlier = before.rewrites if isinstance(before, SiteMethod) else ()
        kept: list[Rewrite] = []
        failed: list[Rewrite] = []
        for rewrite in rewrites:
            try:
                rewritten(vars(owner)[name], (*earlier, *kept, rewrite))
                kept.append(rewrite)
            except SyntaxError as error:
                left.append(f"line {rewrite.position[0]}: its rewrite does not compile ({error.msg})")
                failed.append(rewrite)
        called = {r.module for r in (*earlier, *kept)}
        for attribute in {r.module for r in failed} - called:  # a module only the dropped calls would call
            added = dict(module.named_children()).get(attribute)
            if added is not None and id(added) in self.new_modules:
                del self.new_modules[id(added)]
                delattr(module, attribute)
        module.__dict__[name] = SiteMethod(module, owner, name, (*earlier, *kept))
        self.undo.append(lambda: module.__dict__.pop(name) if before is None else module.__dict__.update({name: before}))

    def add(self, entry: ScannedModule, name: str, new: nn.Module, old: nn.Module) -> None:
        module = entry.module
        module.add_module(name, new)
        self.undo.append(lambda: delattr(module, name))
        if new is not old:
            self.new_modules[id(new)] = old


def _scan(
    model: nn.Module, forms: Forms, classes: tuple[type[nn.Module], ...], swapped: dict[int, nn.Module],
    notes: list[str],
) -> Iterator[ScannedModule]:
    """Every module whose methods may hold call sites, in model order, with the calls of the methods it runs."""
    reader = _MethodReader(model, forms, swapped)
    skipped: list[str] = []  # TorchScript modules and the modules this swap put in: nothing inside is read
    for prefix, module in list(model.named_modules()):  # the modules before this step added any
        if any(prefix.startswith(p + ".") or p == "" for p in skipped):
            continue
        if isinstance(module, torch.jit.ScriptModule) or id(module) in swapped:
            skipped.append(prefix)
            if isinstance(module, torch.jit.ScriptModule):
                notes.extend(_scripted(module, prefix, classes))
            continue
        if not isinstance(module, CAReLU):
            entry = reader.read(prefix, module)
            if entry.methods or entry.problems:
                yield entry


class _MethodReader:
    """Reads the methods each module runs: its root methods, those they call on it, and those other modules'
    methods call on it (`self.backbone.forward_head(x)`)."""

    def __init__(self, model: nn.Module, forms: Forms, swapped: dict[int, nn.Module]) -> None:
        self.forms, self.swapped = forms, swapped
        self.reached: dict[int, list[str]] = defaultdict(list)  # methods other modules call on a module
        swapped_names = {name.rpartition(".")[2] for name, m in model.named_modules() if id(m) in swapped}
        self.activations = forms.names | swapped_names  # names an activation call is written with
        self.interesting = self.activations | {n for m in model.modules() for n in _own_methods(type(m))}

    def read(self, prefix: str, module: nn.Module) -> ScannedModule:
        entry = ScannedModule(prefix, module)
        methods = _own_methods(type(module))
        queue = [name for name in ROOT_METHODS if name in methods] + self.reached.pop(id(module), [])
        done: set[str] = set()
        while queue:
            name = queue.pop(0)
            if name in done or name not in methods:
                continue
            done.add(name)
            owner, function = methods[name]
            instance = module.__dict__.get(name)
            if instance is not None and not isinstance(instance, SiteMethod):
                continue  # an instance attribute runs instead of the class's method
            names = _names(inspect.unwrap(function).__code__)
            if not names & self.interesting:
                continue
            try:
                source = read_method(function)
            except SourceUnavailable as reason:
                if names & self.activations:
                    entry.problems.append(f"{owner.__qualname__}.{name}: {reason}")
                continue
            if "super" in names:
                entry.problems.extend(_reached_through_super(type(module), owner, names, self.activations))
            found = find_calls(source, module, self.forms, self.swapped)
            done_positions = {r.position for r in instance.rewrites} if isinstance(instance, SiteMethod) else set()
            entry.methods.append(ScannedMethod(owner, name, [c for c in found.calls if c.position not in done_positions]))
            for target, method_name in found.methods:
                (queue if target is module else self.reached[id(target)]).append(method_name)
        return entry


def _reached_through_super(cls: type, owner: type, names: set[str], activations: frozenset[str]) -> list[str]:
    """Methods of `owner`'s bases that a `super().<name>(...)` call may run: their own code runs, so their
    activation calls cannot be rewritten."""
    bases = cls.__mro__[cls.__mro__.index(owner) + 1:]
    found = []
    for base in bases:
        if base.__module__.startswith("torch.") or base is object:
            continue
        for name, function in vars(base).items():
            if name in names and isinstance(function, types.FunctionType):
                if _names(function.__code__) & activations:
                    found.append(f"{base.__qualname__}.{name}: it is reached through super(), which runs the "
                                 "class's own code")
    return found


def _own_methods(cls: type) -> dict[str, tuple[type, types.FunctionType]]:
    """name -> (defining class, function) of the plain functions `cls` resolves to outside PyTorch's classes."""
    methods: dict[str, tuple[type, types.FunctionType]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, types.FunctionType):
                methods[name] = (klass, value)
            elif name in methods:
                del methods[name]  # something else (a property, a staticmethod) overrides it
    return {
        name: (klass, f) for name, (klass, f) in methods.items()
        if not (klass.__module__.startswith("torch.") or klass.__module__ == "torch" or klass is object)
    }


def _names(code: types.CodeType) -> set[str]:
    """Every global and attribute name a code object (and the code nested in it) reads."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names


def _scripted(module: nn.Module, prefix: str, classes: tuple[type[nn.Module], ...]) -> list[str]:
    """A TorchScript module runs compiled code that cannot be rewritten: a note if it may call a target."""
    try:
        graph = str(module.inlined_graph)
    except (AttributeError, RuntimeError):
        graph = ""
    operators = [op for cls in classes for op in _SCRIPT_OPERATORS.get(cls, ())]
    found = sorted({op for op in operators if op + "(" in graph or op + "_(" in graph})
    unknown = [c.__name__ for c in classes if c not in _SCRIPT_OPERATORS]
    if not (found or unknown):
        return []
    what = f"calls {', '.join(found)}" if found else f"may call {', '.join(unknown)}"
    return [
        f"{_label(module, prefix)} is a TorchScript module (torch.jit.script/trace) and {what}; its compiled code "
        "cannot be rewritten, so its activations stay as they are. Swap the module before scripting it, or keep it "
        "out with exclude."
    ]


def _unique_name(module: nn.Module, base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ..., whichever neither the module nor `taken` uses yet (added to it)."""
    name, index = base, 0
    while hasattr(module, name) or name in taken:
        index += 1
        name = f"{base}_{index}"
    taken.add(name)
    return name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _label(module: nn.Module, prefix: str) -> str:
    return f"{prefix!r} ({type(module).__name__})" if prefix else f"the model ({type(module).__name__})"
