"""Whether two calls in one method never both run in one call of it: they sit in different arms of one
`if`/`else`, conditional expression or `match`, or the first sits in an `if` arm that ends by returning or
raising and the second comes after that `if`. A module called at such places is one layer written twice
(MobileOne's re-parameterised and training paths, GluMlp's `gate_last`), so the places keep sharing it."""

from __future__ import annotations

import ast

Step = tuple[ast.AST, str, "int | None"]  # a parent, the field of it that holds the child, the index in that list
Path = tuple[Step, ...]  # from the method's definition down to a node


def ancestry(definition: ast.FunctionDef) -> dict[int, Step]:
    """id(node) -> the step from its parent to it, for every node of the method."""
    steps: dict[int, Step] = {}
    for parent in ast.walk(definition):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for index, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        steps[id(child)] = (parent, field, index)
            elif isinstance(value, ast.AST):
                steps[id(value)] = (parent, field, None)
    return steps


def path_of(node: ast.AST, steps: dict[int, Step]) -> Path:
    path = []
    while id(node) in steps:
        step = steps[id(node)]
        path.append(step)
        node = step[0]
    return tuple(reversed(path))


def exclusive(first: Path, second: Path) -> bool:
    """Whether the nodes at `first` and `second` (first in source order) never both run in one call."""
    for depth, (a, b) in enumerate(zip(first, second)):
        if a[0] is not b[0]:
            return False
        if a[1:] == b[1:]:
            continue
        parent, (field_a, index_a), (field_b, index_b) = a[0], a[1:], b[1:]
        if isinstance(parent, (ast.If, ast.IfExp)):
            return {field_a, field_b} == {"body", "orelse"}
        if isinstance(parent, ast.Match):
            return field_a == field_b == "cases" and index_a != index_b
        if field_a == field_b and index_a is not None and index_b is not None and index_a < index_b:
            return _exits(first[depth + 1:])
        return False
    return False


def _exits(below: Path) -> bool:
    """Whether the statement at the head of `below` is an `if` whose arm holding the node ends by returning or
    raising (so nothing after the `if` runs once that arm ran)."""
    if len(below) < 1:
        return False
    statement, field, _ = below[0]
    if not isinstance(statement, ast.If) or field not in ("body", "orelse"):
        return False
    arm = getattr(statement, field)
    return bool(arm) and isinstance(arm[-1], (ast.Return, ast.Raise))
