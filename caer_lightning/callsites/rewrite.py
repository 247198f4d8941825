"""Rewrite the call expressions of a method's source so each activation call calls a module of its own, and
bind the result to the module (`SiteMethod`) so the module's own code keeps running everywhere else."""

from __future__ import annotations

import ast
import copy
import functools
import types
import weakref
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch

from caer_lightning.callsites.finder import Position, position_of
from caer_lightning.callsites.forms import FUNCTIONAL_FORMS, call_input
from caer_lightning.callsites.source import clear_sources, read_method

# Every functional form: a routed call (`g.relu(x)` with `g` known only when it runs) whose callee is one of them
# applies the activation.
_ALL_FUNCTIONS = tuple(f for functions, _ in FUNCTIONAL_FORMS.values() for f in functions)


def route(site: torch.nn.Module, receiver: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """`receiver.name(*args, **kwargs)` as written, unless it is an activation: a Tensor method (`x.relu()`) or
    a functional form reached through a name only known when it runs (`G = F; G.relu(x)`); those call `site`."""
    if isinstance(receiver, torch.Tensor):
        return site(receiver)
    callee = getattr(receiver, name)
    if callee in _ALL_FUNCTIONS:
        return site(args[0] if args else kwargs["input"])
    return callee(*args, **kwargs)


def in_place_result(result: Any, before: Any, in_place: Any) -> tuple[Any, Any]:
    """(the call's value, the new value of its input's name) for a call whose `inplace=` is decided when it runs."""
    return result, (result if in_place else before)


_HELPERS = {"__caer_route__": route, "__caer_in_place__": in_place_result}
_PAIR = "__caer_in_place_pair__"


class Rewrite(NamedTuple):
    """How one call expression changes (plain values: a rewritten method pickles as its list of rewrites)."""

    position: Position  # of the call in its file
    kind: Literal["call", "route", "rename"]  # self.<module>(input) / route(self.<module>, receiver, ...) /
    # self.<module>(the same arguments)
    module: str  # the attribute (path) of the module to call, from `self`
    rebind: str | None = None  # a name the result is assigned to (the call works in place on it)
    rebind_if: Position | None = None  # the `inplace=` argument that decides it when it runs


class _Rewriter(ast.NodeTransformer):
    def __init__(self, self_name: str, rewrites: Sequence[Rewrite]) -> None:
        self.self_name = self_name
        self.rewrites = {r.position: r for r in rewrites}
        self.done: set[Position] = set()

    def visit_Call(self, node: ast.Call) -> ast.expr:
        rewrite = self.rewrites.get(position_of(node))
        flag = _argument_at(node, rewrite.rebind_if) if rewrite and rewrite.rebind_if else None
        self.generic_visit(node)  # calls inside the arguments first
        if rewrite is None:
            return node
        self.done.add(rewrite.position)
        module: ast.expr = ast.Name(id=self.self_name, ctx=ast.Load())
        for attribute in rewrite.module.split("."):
            module = ast.Attribute(value=module, attr=attribute, ctx=ast.Load())
        if rewrite.kind == "call":
            new: ast.expr = ast.Call(func=module, args=[call_input(node)], keywords=[])
        elif rewrite.kind == "route":
            arguments = [module, node.func.value, ast.Constant(node.func.attr), *node.args]
            new = ast.Call(func=ast.Name(id="__caer_route__", ctx=ast.Load()), args=arguments, keywords=node.keywords)
        else:
            new = ast.Call(func=module, args=node.args, keywords=node.keywords)
        if rewrite.rebind is not None:
            new = _rebound(new, rewrite.rebind, flag)
        return ast.copy_location(new, node)


def _rebound(call: ast.expr, name: str, flag: ast.expr | None) -> ast.expr:
    """`(name := call)`, or, when `flag` decides it when it runs, the call's value with `name` assigned the
    result only if `flag` is true."""
    if flag is None:
        return ast.NamedExpr(target=ast.Name(id=name, ctx=ast.Store()), value=call)
    pair = ast.Call(
        func=ast.Name(id="__caer_in_place__", ctx=ast.Load()),
        args=[call, ast.Name(id=name, ctx=ast.Load()), flag], keywords=[],
    )
    second = ast.Subscript(value=ast.Name(id=_PAIR, ctx=ast.Load()), slice=ast.Constant(1), ctx=ast.Load())
    both = ast.Tuple(elts=[ast.NamedExpr(target=ast.Name(id=_PAIR, ctx=ast.Store()), value=pair),
                           ast.NamedExpr(target=ast.Name(id=name, ctx=ast.Store()), value=second)], ctx=ast.Load())
    return ast.Subscript(value=ast.Subscript(value=both, slice=ast.Constant(0), ctx=ast.Load()),
                         slice=ast.Constant(0), ctx=ast.Load())


def _argument_at(call: ast.Call, position: Position) -> ast.expr:
    for argument in (*call.args, *(k.value for k in call.keywords)):
        if position_of(argument) == position:
            return argument
    raise ValueError(f"no argument at {position} in {ast.unparse(call)}")


_COMPILED: weakref.WeakKeyDictionary[types.FunctionType, dict[tuple[Rewrite, ...], types.FunctionType]] = (
    weakref.WeakKeyDictionary()
)


def clear_caches() -> None:
    """Forget every source read and rewrite compiled (they are rebuilt on demand)."""
    _COMPILED.clear()
    clear_sources()


def rewritten(function: types.FunctionType, rewrites: tuple[Rewrite, ...]) -> types.FunctionType:
    """`function` with `rewrites` applied to its source (raises SyntaxError if the result does not compile)."""
    cache = _COMPILED.setdefault(function, {})
    if rewrites not in cache:
        source = read_method(function)
        definition = copy.deepcopy(source.definition)
        rewriter = _Rewriter(source.self_name or "self", rewrites)
        definition = rewriter.visit(definition)
        missing = {r.position for r in rewrites} - rewriter.done
        if missing:
            raise ValueError(f"{function.__qualname__}: no call at {sorted(missing)} in its source")
        cache[rewrites] = source.compile(definition, _HELPERS)
    return cache[rewrites]


class SiteMethod(functools.partial):
    """A module's method after the swap: its rewritten function bound to the module, held as an instance
    attribute (`module.forward`). Copies and pickles rebuild it from the class's own method and the rewrites."""

    def __new__(cls, module: torch.nn.Module, owner: type, name: str, rewrites: tuple[Rewrite, ...]) -> SiteMethod:
        method = super().__new__(cls, rewritten(vars(owner)[name], rewrites), module)
        method.owner, method.name, method.rewrites = owner, name, rewrites
        return method

    def __reduce__(self) -> tuple:
        return (SiteMethod, (self.args[0], self.owner, self.name, self.rewrites))

    def __repr__(self) -> str:
        return f"<{self.owner.__qualname__}.{self.name} with {len(self.rewrites)} activation call(s) rewritten>"

