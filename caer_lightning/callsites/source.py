"""The source of a method, checked against the code that runs, and compiled again after a rewrite.

A rewritten method is the method's own source with some call expressions changed, compiled with the original
function's globals, closure cells (`super()`'s `__class__` included), defaults, file name and line numbers, so
tracebacks, debuggers and torch.compile see the user's code where it lives.
"""

from __future__ import annotations

import __future__
import ast
import copy
import inspect
import types
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

# Compiler flags of `from __future__ import ...` (annotations, ...): a rewrite compiles under the original's.
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag


class SourceUnavailable(Exception):
    """The method's source cannot be read, or is not the code that runs (the message says why)."""


@dataclass(frozen=True)
class MethodSource:
    """A method and the syntax tree of its definition, at the line numbers of its file."""

    function: types.FunctionType
    definition: ast.FunctionDef

    @property
    def self_name(self) -> str | None:
        """The name of the first positional parameter (`self`), or None."""
        arguments = self.definition.args
        positional = [*arguments.posonlyargs, *arguments.args]
        return positional[0].arg if positional else None

    def compile(self, definition: ast.FunctionDef, extra_cells: Mapping[str, object]) -> types.FunctionType:
        """A function from `definition` (a rewrite of this method's) with the original's globals, closure, defaults
        and attributes; `extra_cells` are names the rewrite reads as closure variables (the routing helpers)."""
        original = self.function
        cells = dict(zip(original.__code__.co_freevars, original.__closure__ or ()))
        code = _compile_definition(definition, original, [*cells, *extra_cells])
        closure = []
        for name in code.co_freevars:
            closure.append(cells[name] if name in cells else types.CellType(extra_cells[name]))
        function = types.FunctionType(code, original.__globals__, original.__name__, original.__defaults__,
                                      tuple(closure) or None)
        function.__kwdefaults__ = copy.copy(original.__kwdefaults__)
        function.__dict__.update(original.__dict__)  # e.g. torch.jit.ignore's marks
        for attribute in ("__qualname__", "__module__", "__doc__", "__annotations__"):
            setattr(function, attribute, getattr(original, attribute))
        return function


_CACHE: weakref.WeakKeyDictionary[types.FunctionType, MethodSource | SourceUnavailable] = weakref.WeakKeyDictionary()


def clear_sources() -> None:
    _CACHE.clear()


def read_method(function: types.FunctionType) -> MethodSource:
    """The source of `function`; raises SourceUnavailable when it cannot be read or does not compile to the code
    that runs (a decorator that wraps the method, code generated at run time, a file edited since import)."""
    cached = _CACHE.get(function)
    if cached is None:
        try:
            cached = _read(function)
        except SourceUnavailable as error:
            cached = error
        _CACHE[function] = cached
    if isinstance(cached, SourceUnavailable):
        raise cached
    return cached


def _read(function: types.FunctionType) -> MethodSource:
    if hasattr(function, "__wrapped__"):
        raise SourceUnavailable("it is wrapped by a decorator, whose code would be lost")
    try:
        lines, first = inspect.getsourcelines(function)
    except (OSError, TypeError) as error:
        raise SourceUnavailable(f"its source cannot be read ({error})") from None
    text = "".join(lines)
    try:  # an indented method is parsed inside a block, so its string constants keep their indentation
        tree = ast.parse("if 1:\n" + text if text[:1].isspace() else text)
    except SyntaxError as error:
        raise SourceUnavailable(f"its source does not parse ({error.msg})") from None
    ast.increment_lineno(tree, first - (2 if text[:1].isspace() else 1))
    body = tree.body[0].body if isinstance(tree.body[0], ast.If) else tree.body
    definition = body[0] if body else None
    if not isinstance(definition, ast.FunctionDef) or definition.name != function.__code__.co_name:
        raise SourceUnavailable("its source is not a plain `def` of that name (a lambda, or code made at run time)")
    source = MethodSource(function, definition)
    code = _compile_definition(definition, function, list(function.__code__.co_freevars))
    if _fingerprint(code) != _fingerprint(function.__code__):
        raise SourceUnavailable("its source does not compile to the code that runs (a file changed since import?)")
    return source


def _compile_definition(
    definition: ast.FunctionDef, original: types.FunctionType, free_names: list[str]
) -> types.CodeType:
    """Compile `definition` as the original was: inside a class of the same name (private names such as
    `self.__x` are mangled with it), itself inside a function whose parameters are `free_names` (the names the
    method reads from enclosing scopes stay closure variables). Returns the method's code object."""
    owner = _class_name(original)
    body: list[ast.stmt] = [definition]
    if owner is not None:
        body = [ast.ClassDef(name=owner, bases=[], keywords=[], body=body, decorator_list=[], type_params=[])]
        free_names = [n for n in free_names if n != "__class__"]  # the class provides super()'s cell
    outer = ast.FunctionDef(
        name="__caer_lightning_scope__",
        args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n in free_names], kwonlyargs=[],
                           kw_defaults=[], defaults=[]),
        body=[*body, ast.Return(value=None)], decorator_list=[], returns=None, type_params=[],
    )
    for node in (outer, *body):
        ast.copy_location(node, definition)
    module = ast.fix_missing_locations(ast.Module(body=[outer], type_ignores=[]))
    flags = original.__code__.co_flags & _FUTURE_FLAGS
    code = compile(module, original.__code__.co_filename, "exec", flags=flags, dont_inherit=True)
    for name in ("__caer_lightning_scope__", owner, definition.name):
        if name is not None:
            code = next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == name)
    return code


def _class_name(function: types.FunctionType) -> str | None:
    """The name of the class whose body defined `function` (it decides name mangling), or None."""
    parts = function.__qualname__.split(".")
    return parts[-2] if len(parts) > 1 and parts[-2] != "<locals>" else None


def _fingerprint(code: types.CodeType) -> tuple:
    """What a function's code is made of (names, variables, constants, nested code, lines), without the bytecode
    itself, which differs for the same source with the compile context (e.g. module-level imports)."""
    constants = tuple(
        _fingerprint(c) if isinstance(c, types.CodeType) else (type(c).__name__, repr(c)) for c in code.co_consts
    )
    lines = tuple(sorted({line for _, _, line in code.co_lines() if line is not None}))
    return (
        code.co_name, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
        code.co_posonlyargcount, code.co_kwonlyargcount, constants, lines,
    )
