"""Find the activation calls written in one method of one module: functional calls (`F.relu(x)`), Tensor
methods (`x.relu()`), calls of activation modules (`self.act(x)`), and calls of the module's other methods
(`self.forward_features(x)`), which are read next."""

from __future__ import annotations

import ast
import builtins
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from caer_lightning.callsites.branches import Path, ancestry, path_of
from caer_lightning.callsites.forms import VIEW_METHODS, Forms, InPlace, call_input, in_place
from caer_lightning.callsites.source import MethodSource

Kind = Literal["function", "method", "module"]
Position = tuple[int, int, int, int]  # line, column, end line, end column of the call in its file
_UNRESOLVED = object()


@dataclass
class FoundCall:
    """One activation call in a method's source."""

    node: ast.Call
    kind: Kind  # function: F.relu(x); method: x.relu() (routed when it runs); module: self.act(x)
    base_name: str  # what a module of its own is named after: relu, gelu, act, block_act
    target: type[nn.Module] | None  # the class a function or method form stands for
    module: nn.Module | None = None  # the module a "module" call calls
    rebind: str | None = None  # works in place on this name: later readers must read the call's result
    rebind_if: Position | None = None  # the `inplace=` argument that decides it when it runs
    problem: str | None = None  # why the call cannot get a module of its own
    path: Path = ()  # where it sits in the method (see `branches`)

    @property
    def position(self) -> Position:
        return position_of(self.node)

    @property
    def text(self) -> str:
        return ast.unparse(self.node)


@dataclass
class MethodCalls:
    """What one method of a module calls: activation calls, and other methods (of the module or a child)."""

    calls: list[FoundCall] = field(default_factory=list)
    methods: list[tuple[nn.Module, str]] = field(default_factory=list)


def position_of(node: ast.AST) -> Position:
    return (node.lineno, node.col_offset, node.end_lineno or 0, node.end_col_offset or 0)


def find_calls(
    source: MethodSource, module: nn.Module, forms: Forms, swapped: Mapping[int, nn.Module]
) -> MethodCalls:
    """The activation calls `source` (a method of `module`) makes; `swapped` maps the ids of the modules this
    swap put in to what they replaced (a call of one is a site)."""
    finder = _Finder(source, module, forms, swapped)
    finder.visit_body(source.definition, hidden=finder.self_rebound)
    return finder.found


class _Finder:
    """Walks one method's syntax tree, classifying every call (see `find_calls`)."""

    def __init__(self, source: MethodSource, module: nn.Module, forms: Forms, swapped: Mapping[int, nn.Module]) -> None:
        self.source, self.module, self.forms, self.swapped = source, module, forms, swapped
        self.self_name = source.self_name
        self.bound = _bound_names(source.definition)
        self.self_rebound = self.self_name is None or _assigns(source.definition, self.self_name)
        self.steps = ancestry(source.definition)
        self.found = MethodCalls()

    def visit_body(self, node: ast.AST, hidden: bool) -> None:
        """Visit `node`'s children; `hidden`: the method's `self` is not what its name means here."""
        for child in ast.iter_child_nodes(node):
            child_hidden = hidden
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_hidden = hidden or self.self_name in {a.arg for a in _all_arguments(child.args)}
            elif isinstance(child, ast.ClassDef):
                continue  # a class body is its own world
            if isinstance(child, ast.Call):
                self.classify(child, child_hidden)
            self.visit_body(child, child_hidden)

    def classify(self, call: ast.Call, hidden: bool) -> None:
        chain = _dotted(call.func)
        if chain and chain[0] == self.self_name and not hidden:
            self.classify_on_self(call, chain)
            return
        if chain and chain[0] not in self.bound:
            value = self.static_value(chain)
            if value is not _UNRESOLVED:
                target = self.forms.function_target(value)
                if target is not None:
                    self.add_function_call(call, value, target, hidden)
                return
        if isinstance(call.func, ast.Attribute) and call.func.attr in self.forms.methods:
            self.add_method_call(call, hidden)

    def classify_on_self(self, call: ast.Call, chain: list[str]) -> None:
        """`self.a.b(...)`: a module this swap put in (a site), a method of a module (read next), or a Tensor
        method of a tensor attribute (`self.weight.relu()`)."""
        owner = _submodule(self.module, chain[1:-1])
        if owner is None:
            if call.func.attr in self.forms.methods:  # e.g. self.weight.relu(): a Tensor attribute
                self.add_method_call(call, hidden=False)
            return
        attribute = chain[-1]
        called = dict(owner.named_children()).get(attribute) if len(chain) > 1 else None
        if called is not None:
            replaced = self.swapped.get(id(called))
            if replaced is not None:
                found = FoundCall(call, "module", "_".join(chain[1:]), None, called, path=path_of(call, self.steps))
                if getattr(replaced, "inplace", False) is True:  # the new module does not work in place
                    found.rebind, found.rebind_if, _ = self.in_place_effect(call, call_input(call), True)
                self.found.calls.append(found)
            return
        if len(chain) > 1 and isinstance(getattr(type(owner), attribute, None), types.FunctionType):
            self.found.methods.append((owner, attribute))

    def add_function_call(self, call: ast.Call, function: object, target: type[nn.Module], hidden: bool) -> None:
        name = getattr(function, "__name__", "activation").rstrip("_")
        found = FoundCall(call, "function", name, target)
        found.rebind, found.rebind_if, found.problem = self.in_place_effect(
            call, call_input(call), in_place(function, call)
        )
        if hidden:
            found.problem = f"it is inside a nested function whose own `{self.self_name}` hides the module"
        elif self.self_rebound:
            found.problem = "the method has no `self` parameter, or assigns to it"
        elif call_input(call) is None:
            found.problem = "its input is not a plain first argument"
        self.found.calls.append(found)

    def add_method_call(self, call: ast.Call, hidden: bool) -> None:
        attribute = call.func.attr
        found = FoundCall(call, "method", attribute.rstrip("_"), self.forms.methods[attribute])
        found.rebind, found.rebind_if, found.problem = self.in_place_effect(
            call, call.func.value, attribute.endswith("_")
        )
        if hidden or self.self_rebound:
            found.problem = found.problem or "the module is not reachable from this place (no `self`)"
        self.found.calls.append(found)

    def in_place_effect(
        self, call: ast.Call, target: ast.expr | None, mode: InPlace
    ) -> tuple[str | None, Position | None, str | None]:
        """(name to rebind, position of the flag deciding it, problem) for a call that may work in place on
        `target`, whose new value must reach later readers of `target`: a plain name is assigned the result; a
        computed temporary (`self.bn(x)`, `x * 2`) needs nothing; anything else (an attribute, an element, a view
        such as `x.view(-1)`) cannot be followed."""
        if mode is False or target is None or _temporary(target):
            return None, None, None
        if isinstance(target, ast.Name):
            if not self.needs_rebinding(call, target):
                return None, None, None
            return target.id, (None if mode is True else position_of(mode)), None
        return None, None, f"it works in place on `{ast.unparse(target)}`, which later code may read"

    def needs_rebinding(self, call: ast.Call, target: ast.expr | None) -> bool:
        """Whether an in-place call on the name `target` must assign its result to that name: not for
        `x = f(x)` and `return f(x)`, where the result already takes the name's place."""
        if not isinstance(target, ast.Name):
            return False
        parent = self.steps[id(call)][0] if id(call) in self.steps else None
        if isinstance(parent, ast.Return):
            return False
        if isinstance(parent, ast.Assign) and parent.value is call and len(parent.targets) == 1:
            assigned = parent.targets[0]
            return not (isinstance(assigned, ast.Name) and assigned.id == target.id)
        return True

    def static_value(self, chain: list[str]) -> object:
        """The value of a dotted name read from globals, closure or builtins (through modules and classes only),
        or _UNRESOLVED."""
        function = self.source.function
        root = chain[0]
        value: object = _UNRESOLVED
        if root in function.__code__.co_freevars:
            cell = function.__closure__[function.__code__.co_freevars.index(root)]
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                return _UNRESOLVED
        elif root in function.__globals__:
            value = function.__globals__[root]
        elif hasattr(builtins, root):
            value = getattr(builtins, root)
        for attribute in chain[1:]:
            if not isinstance(value, (types.ModuleType, type)):
                return _UNRESOLVED
            value = getattr(value, attribute, _UNRESOLVED)
        return value


def _temporary(node: ast.expr) -> bool:
    """Whether `node` computes a new tensor no name holds: an arithmetic result, or a call that is not a view
    method (`x.view(...)`, `x.detach()`, ... share the receiver's storage)."""
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return True
    if isinstance(node, ast.Call):
        return not (isinstance(node.func, ast.Attribute) and node.func.attr in VIEW_METHODS)
    return False


def dotted_call(call: ast.Call) -> list[str]:
    """The dotted callee of a call (`["self", "block", "act"]`); [] when it is not a dotted name."""
    return _dotted(call.func) or []


def _dotted(node: ast.expr) -> list[str] | None:
    """["F", "relu"] for `F.relu`, ["self", "block", "act"] for `self.block.act`; None for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _submodule(module: nn.Module, path: list[str]) -> nn.Module | None:
    """The submodule at `path` through registered children only (no properties run), or None."""
    for name in path:
        module = dict(module.named_children()).get(name) if isinstance(module, nn.Module) else None
        if module is None:
            return None
    return module


def _all_arguments(arguments: ast.arguments) -> Iterator[ast.arg]:
    yield from arguments.posonlyargs
    yield from arguments.args
    yield from arguments.kwonlyargs
    for extra in (arguments.vararg, arguments.kwarg):
        if extra is not None:
            yield extra


def _bound_names(definition: ast.FunctionDef) -> set[str]:
    """Every name the method (or a scope inside it) binds: such names are not globals."""
    bound = {a.arg for node in ast.walk(definition) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
             ast.Lambda)) for a in _all_arguments(node.args)}
    for node in ast.walk(definition):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not definition:
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return bound


def _assigns(definition: ast.FunctionDef, name: str) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, (ast.Store, ast.Del))
        for node in ast.walk(definition)
    )

