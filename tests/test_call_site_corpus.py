"""The swap never changes what a model computes: a corpus of forwards, one per Python construct a model's author
may write around an activation call, each swapped and compared with the unswapped model over several inputs, in
train and eval mode, and after its attributes change.

How the comparison sees every call site: the swap's factory gives each site a `TwiceReLU` (2·ReLU), and the
original model runs under `TwiceEveryReLU`, a torch-function mode that makes every ReLU call it makes (F.relu,
torch.relu, x.relu(), the in-place forms, nn.ReLU's own call) return 2·ReLU, in place where the call was. The
outputs are bitwise equal only if every call became its site's module, in the same place, with in-place
effects kept; a frozen trace, a dropped branch or a stale attribute shows as a difference.
"""

from __future__ import annotations

import copy
import functools
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import relu as bare_relu
from torch.overrides import TorchFunctionMode

from caer_lightning import CAReLU, swap_activations

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}


class TwiceEveryReLU(TorchFunctionMode):
    """Every ReLU call returns 2·ReLU (in place for the in-place forms)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU and not kwargs.get("inplace", False) and not (len(args) > 1 and args[1] is True):
            return torch.relu(args[0]) * 2
        if func in _RELU_IN_PLACE or func in _RELU:
            return torch.relu_(args[0]).mul_(2)
        return func(*args, **kwargs)


class TwiceReLU(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z) * 2


def twice(old: nn.Module) -> nn.Module:
    return TwiceReLU()


def assert_same(model: nn.Module, swapped: nn.Module, inputs: list[tuple], kwargs: dict | None = None) -> None:
    for mode in (True, False):
        model.train(mode), swapped.train(mode)
        for args in inputs:
            with torch.no_grad():
                torch.manual_seed(0)  # dropout draws the same masks in both
                with TwiceEveryReLU():
                    expected = model(*copy.deepcopy(args), **(kwargs or {}))
                torch.manual_seed(0)
                got = swapped(*copy.deepcopy(args), **(kwargs or {}))
            assert torch.equal(got, expected), f"outputs differ (train={mode}, inputs {[getattr(a, 'shape', a) for a in args]})"


def swap_and_compare(model: nn.Module, inputs: list[tuple], expected_names: list[str], **kwargs) -> nn.Module:
    swapped = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every site of this corpus is rewritten: no warning
        names = swap_activations(swapped, factory=twice, **kwargs)
    assert names == expected_names
    assert_same(model, swapped, inputs)
    return swapped


def x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the corpus ------------------------------------------------------------------------------------------------


class OptionalArguments(nn.Module):
    """timm's DlaBasic: `forward(self, x, shortcut=None, children=None)`; `if mask is None: mask = ...`."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, shortcut=None, children=None, mask=None):
        if shortcut is None:
            shortcut = x
        if mask is None:
            mask = torch.ones_like(x)
        out = self.relu(self.a(x))
        out = self.b(out) * mask
        out += shortcut
        return self.relu(out)


def test_optional_arguments_and_none_checks():
    model = OptionalArguments()
    swapped = swap_and_compare(model, [(x(3, 6),), (x(1, 6, seed=1),)], ["relu", "relu_1"])
    shortcut, mask = x(3, 6, seed=2), (x(3, 6, seed=3) > 0).float()
    with torch.no_grad(), TwiceEveryReLU():
        expected = model(x(3, 6), shortcut, mask=mask)
    with torch.no_grad():
        assert torch.equal(swapped(x(3, 6), shortcut, mask=mask), expected)


class TensorChecks(nn.Module):
    """`if torch.is_tensor(bias)` / `isinstance(scale, float)`: a trace would freeze the branch of the swap's
    inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x, bias=None, scale=1):
        y = F.relu(self.a(x))
        if torch.is_tensor(bias):
            y = y + bias
        if isinstance(scale, float):
            y = y * scale
        return y


def test_is_tensor_and_isinstance_checks():
    model = TensorChecks()
    swapped = swap_and_compare(model, [(x(2, 4),)], ["relu"])
    for args in ((x(2, 4), torch.full((4,), 10.0)), (x(2, 4), None, 0.5), (x(2, 4), torch.ones(4), 3.0)):
        with torch.no_grad(), TwiceEveryReLU():
            expected = model(*args)
        with torch.no_grad():
            assert torch.equal(swapped(*args), expected)


class LiveAttributes(nn.Module):
    """Attributes read in forward (`self.gain`, `self.use_skip`) keep working after they change."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.gain, self.use_skip = 1.5, True

    def forward(self, x):
        y = F.relu(self.a(x)) * self.gain
        if self.use_skip:
            y = y + x
        return y


def test_attributes_read_in_forward_stay_live():
    model = LiveAttributes()
    swapped = swap_and_compare(model, [(x(2, 4),)], ["relu"])
    for module in (model, swapped):
        module.gain, module.use_skip = 0.0, False
    assert_same(model, swapped, [(x(2, 4),)])
    with torch.no_grad():
        assert swapped(x(2, 4)).abs().max().item() == 0.0


class VaryingLoop(nn.Module):
    """A loop whose count is an argument and an attribute: one call site, called many times."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(5, 5) for _ in range(4))
        self.depth = 2
        self.act = nn.ReLU()

    def forward(self, x, repeats=1):
        for _ in range(repeats):
            x = F.relu(self.blocks[0](x))
        for block in self.blocks[: self.depth]:
            x = self.act(block(x))
        return x


def test_loops_with_a_varying_count():
    model = VaryingLoop()
    swapped = swap_and_compare(model, [(x(2, 5),)], ["act", "relu"])
    for repeats in (0, 3):
        with torch.no_grad(), TwiceEveryReLU():
            expected = model(x(2, 5), repeats=repeats)
        with torch.no_grad():
            assert torch.equal(swapped(x(2, 5), repeats=repeats), expected)
    model.depth = swapped.depth = 4
    assert_same(model, swapped, [(x(2, 5),)])


class EarlyReturn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        if x.shape[0] == 1:
            return torch.relu(self.a(x))
        if x.sum() > 0:  # data-dependent: no tracer could keep both branches
            return F.relu(x) - 1
        return self.a(x).relu()


def test_early_returns_and_data_dependent_branches():
    inputs = [(x(1, 3),), (torch.ones(2, 3),), (-torch.ones(2, 3),)]
    swap_and_compare(EarlyReturn(), inputs, ["relu", "relu_1", "relu_2"])


def make_closure_model(scale: float) -> nn.Module:
    """A class defined in a function: its forward reads `scale` and `offset` from the enclosing scope."""
    offset = torch.tensor(0.25)

    class Closure(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.a(x)) * scale + offset

    return Closure()


def test_closures():
    """Each class made by the factory keeps its own closure cells after the swap."""
    triple, single = make_closure_model(3.0), make_closure_model(1.0)
    single.load_state_dict(triple.state_dict())
    swapped_triple = swap_and_compare(triple, [(x(2, 4),)], ["relu"])
    swapped_single = swap_and_compare(single, [(x(2, 4),)], ["relu"])
    with torch.no_grad():
        twice_relu = torch.relu(triple.a(x(2, 4))) * 2
        assert torch.equal(swapped_triple(x(2, 4)), twice_relu * 3.0 + 0.25)
        assert torch.equal(swapped_single(x(2, 4)), twice_relu * 1.0 + 0.25)


class VarArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, *inputs, **options):
        total = sum(inputs)
        y = F.relu(self.a(total), inplace=options.get("inplace", False))
        return y * options.get("scale", 1.0)


def test_star_args_and_keyword_options():
    model = VarArgs()
    swapped = swap_and_compare(model, [(x(2, 4), x(2, 4, seed=1)), (x(2, 4),)], ["relu"])
    with torch.no_grad(), TwiceEveryReLU():
        expected = model(x(2, 4), scale=-2.0)
    with torch.no_grad():
        assert torch.equal(swapped(x(2, 4), scale=-2.0), expected)


class Helpers(nn.Module):
    """forward calls its own methods (timm's forward_features / forward_head), a lambda and a nested function,
    and a generator expression; a method forward never calls is left as written."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def features(self, x):
        return F.relu(self.a(x))

    def forward_head(self, x):
        return self.head(torch.relu(x))

    def forward(self, x):
        squash = lambda t: F.relu(t - 0.5)  # noqa: E731

        def shift(t):
            return F.relu(t + 0.5)

        y = self.features(x)
        y = squash(y) + shift(y) + sum(F.relu(y * k) for k in (1.0, -1.0))
        return self.forward_head(y)

    def unused(self, x):  # not reachable from forward: not rewritten
        return F.relu(x)


def test_helper_methods_lambdas_nested_functions_and_generators():
    swapped = swap_and_compare(Helpers(), [(x(3, 4),)], ["relu", "relu_1", "relu_2", "relu_3", "relu_4"])
    assert "unused" not in vars(swapped) and "features" in vars(swapped) and "forward_head" in vars(swapped)


class Parent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.__scale = 2.0  # name-mangled: self._Parent__scale

    def forward(self, x):
        return F.relu(self.a(x)) * self.__scale


class Child(Parent):
    def forward(self, x):
        return super().forward(x).relu_() + F.relu(-x)


def forward_written_elsewhere(self, x):
    return F.relu(self.a(x)) - 0.5


class BorrowedForward(nn.Module):
    """A method defined at module level (not indented in its source) and assigned in the class body."""

    forward = forward_written_elsewhere

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)


def test_a_method_defined_outside_the_class():
    swap_and_compare(BorrowedForward(), [(x(2, 4),)], ["relu"])


def test_super_and_private_names():
    """super() needs the original __class__ cell; self.__scale must stay mangled as _Parent__scale."""
    model = Child()
    swapped = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"Parent\.forward.*super\(\)"):
        names = swap_activations(swapped, factory=twice)
    assert names == ["relu", "relu_1"]
    with torch.no_grad():  # Child's two calls are swapped; Parent.forward's, reached through super(), is not
        expected = 2 * torch.relu(torch.relu(model.a(x(2, 4))) * 2.0) + 2 * torch.relu(-x(2, 4))
        assert torch.equal(swapped(x(2, 4)), expected)
    swap_and_compare(Parent(), [(x(2, 4),)], ["relu"])


class InPlace(nn.Module):
    """In-place calls whose input is read afterwards: later readers must see the activation's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.inplace = True
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.a(x)
        F.relu_(y)
        z = self.b(y)
        z.relu_()
        w = z * 3 - 1
        F.relu(w, inplace=True)
        v = w - 0.5
        F.relu(v, inplace=self.inplace)
        u = v + 0.25
        self.act(u)
        t = u - 0.75
        F.relu(t, True)  # in place, positionally
        t = F.relu(t * 2, inplace=True)  # the result takes the name's place: nothing to rebind
        return y + z + w + v + u + t + F.relu(self.b(x), inplace=True)


def test_in_place_calls_whose_input_is_read_later():
    model = InPlace()
    names = ["act", "relu", "relu_1", "relu_2", "relu_3", "relu_4", "relu_5", "relu_6"]
    swapped = swap_and_compare(model, [(x(3, 4),)], names)
    rebound = {r.module: r.rebind for r in swapped.forward.rewrites}
    assert rebound == {"relu": "y", "relu_1": "z", "relu_2": "w", "relu_3": "v", "act": "u", "relu_4": "t",
                       "relu_5": None, "relu_6": None}
    model.inplace = swapped.inplace = False  # decided when it runs
    assert_same(model, swapped, [(x(3, 4),)])


class Imported(nn.Module):
    """`from torch.nn.functional import relu`, `torch.nn.functional.relu`, `torch.Tensor.relu(x)`, and a local
    alias known only when the code runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        functional = F
        y = bare_relu(self.a(x)) + torch.nn.functional.relu(x - 1)
        y = y + torch.Tensor.relu(x + 1) + functional.relu(x * 2) + functional.relu(input=x * 3)
        return y


def test_imported_names_and_aliases():
    swap_and_compare(Imported(), [(x(2, 4),)], ["relu", "relu_1", "relu_2", "relu_3", "relu_4"])


class Shared(nn.Module):
    """One module called at three places: twice in forward (once in a loop), once through a child's method."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.inner = Inner()
        self.inner.shared = self.act

    def forward(self, x, n=2):
        x = self.act(x - 0.1)
        for _ in range(n):
            x = self.act(x * 1.5 - 0.3)
        return self.inner(x) + self.inner.own(x + 0.4) + self.inner.features(x)


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.own = nn.ReLU()

    def forward(self, x):
        return self.own(self.shared(x - 0.2))

    def features(self, x):  # called by the parent only: read because the parent calls it
        return F.relu(x - 0.6)


def test_module_called_at_several_places_gets_one_per_place():
    """Twice in forward (once in a loop), through a child's method, and a child's module called by the parent
    too (`self.inner.own(...)`: the parent's place comes first in model order and keeps it, the child's own call
    gets `inner.own_1`); a child's method only the parent calls (`inner.relu`)."""
    model = Shared()
    names = ["act", "inner.own", "inner.shared", "inner.own_1", "inner.relu", "act_1"]
    swapped = swap_and_compare(model, [(x(2, 3),)], names)
    assert len({id(swapped.get_submodule(n)) for n in names}) == len(names), "each place has its own module"


class ExclusiveArms(nn.Module):
    """One module called in arms that never run in the same call (MobileOne's re-parameterised path behind an
    early return, GluMlp's `gate_last` conditional expression): one layer written twice, so it keeps one module
    per group of places that can run together."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.act = nn.Linear(4, 4), nn.ReLU()
        self.reparam: nn.Module | None = None
        self.gate_last = True

    def forward(self, x):
        if self.reparam is not None:
            return self.act(self.reparam(x))
        y = self.act(self.a(x))  # never runs with the call above: the same module
        return y * self.act(y - 1) if self.gate_last else self.act(y + 1) * y  # runs with the one above: a new one


class NotExclusive(nn.Module):
    """Places that can run in one call: after an `if` arm that does not return, after a loop that returns
    (it may run no iteration), and inside one arm and after it."""

    def __init__(self) -> None:
        super().__init__()
        self.act, self.flag, self.n = nn.ReLU(), True, 1

    def forward(self, x):
        if self.flag:
            x = self.act(x - 0.1)
        x = self.act(x * 2)
        for _ in range(self.n):
            return self.act(x + 0.3)
        return -x


def test_places_that_can_run_together_get_their_own_modules():
    model = NotExclusive()
    swapped = swap_and_compare(model, [(x(2, 4),)], ["act", "act_1", "act_2"])
    model.n = swapped.n = 0
    model.flag = swapped.flag = False
    assert_same(model, swapped, [(x(2, 4),)])


def test_calls_in_exclusive_arms_share_the_module():
    model = ExclusiveArms()
    swapped = swap_and_compare(model, [(x(2, 4),)], ["act", "act_1"])
    model.gate_last = swapped.gate_last = False
    assert_same(model, swapped, [(x(2, 4),)])
    model.reparam = swapped.reparam = nn.Linear(4, 4)
    swapped.reparam.load_state_dict(model.reparam.state_dict())
    assert_same(model, swapped, [(x(2, 4),)])


class StatementsAndScopes(nn.Module):
    """try/except, with, while, match, comprehensions, keyword-only arguments and defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.mode = "double"

    def forward(self, x, *, steps: int = 2):
        try:
            y = F.relu(self.a(x))
        except RuntimeError:
            y = x
        with torch.autocast("cpu", enabled=False):
            y = y + F.relu(-y)
        i = 0
        while i < steps:
            y = F.relu(y - 0.1)
            i += 1
        match self.mode:
            case "double":
                y = y * 2
            case _:
                y = -y
        return torch.stack([F.relu(y + k) for k in range(2)]).sum(0)


def test_statements_and_scopes():
    model = StatementsAndScopes()
    swapped = swap_and_compare(model, [(x(2, 4),)], ["relu", "relu_1", "relu_2", "relu_3"])
    model.mode = swapped.mode = "negate"
    assert_same(model, swapped, [(x(2, 4),)])


class ModeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = F.relu(self.a(x))
        return self.drop(x) * 2 if self.training else x


def test_train_and_eval_branches():
    swap_and_compare(ModeDependent(), [(x(2, 4),)], ["relu"])


# --- what cannot be rewritten: left alone with a warning that names it -----------------------------------------


def wrapping(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    @wrapping
    def forward(self, x):
        return F.relu(self.a(x))


class Generated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)


namespace: dict = {"F": F}
exec("def forward(self, x):\n    return F.relu(self.a(x))\n", namespace)  # code made at run time: no source
Generated.forward = namespace["forward"]


class InPlaceOnAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        out = [self.a(x)]
        out[0].relu_()  # works in place on an element later code reads
        return out[0] + torch.relu(x)


class InPlaceOnView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        y = self.a(x)
        F.relu_(y.view(-1))  # changes y through a view
        return y + torch.relu(x)


class LambdaForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    forward = lambda self, x: F.relu(self.a(x))  # noqa: E731


class HiddenSelf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        def shifted(self, t):  # its own `self`: not the module
            return F.relu(t - self) + t.relu()

        return shifted(0.5, self.a(x)) + torch.relu(x)


@pytest.mark.parametrize("cls,expected_names,reason,expected", [
    (Wrapped, [], r"Wrapped\.forward: it is wrapped by a decorator", lambda m, y: torch.relu(m.a(y))),
    (LambdaForward, [], r"LambdaForward\.forward: its source is not a plain `def`", lambda m, y: torch.relu(m.a(y))),
    (InPlaceOnView, ["1.relu_1"], r"`F\.relu_\(y\.view\(-1\)\)`: it works in place on `y\.view\(-1\)`",
     lambda m, y: torch.relu(m.a(y)) + 2 * torch.relu(y)),
    (HiddenSelf, ["1.relu_2"], r"line \d+, `F\.relu\(t - self\)`: it is inside a nested function whose own `self`"
     r".*`t\.relu\(\)`: the module is not reachable",
     lambda m, y: torch.relu(m.a(y) - 0.5) + m.a(y).relu() + 2 * torch.relu(y)),
    (Generated, [], r"forward: its source cannot be read", lambda m, y: torch.relu(m.a(y))),
    (InPlaceOnAttribute, ["1.relu_1"], r"line \d+, `out\[0\]\.relu_\(\)`: it works in place on `out\[0\]`",
     lambda m, y: torch.relu(m.a(y)) + 2 * torch.relu(y)),
])
def test_calls_that_cannot_be_rewritten_are_left_alone_and_named(cls, expected_names, reason, expected):
    module = cls()
    model = nn.Sequential(nn.ReLU(), module)
    with pytest.warns(UserWarning, match=rf"'1' \({type(module).__name__}\).*{reason}.*exclude"):
        names = swap_activations(model, factory=twice)
    assert names == ["0", *expected_names]
    with torch.no_grad():  # the left call still computes ReLU; the rest of the model is swapped
        assert torch.equal(model(x(2, 4)), expected(module, 2 * torch.relu(x(2, 4))))


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")  # users still script parts
def test_a_scripted_submodule_is_named_not_skipped_silently():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), scripted)
    with pytest.warns(UserWarning, match=r"'2' .*TorchScript.*aten::relu.*Swap the module before scripting"):
        assert swap_activations(model, factory=twice) == ["1"]


def test_a_comprehension_variable_cannot_be_rebound_so_that_call_is_left_alone():
    class Comprehension(nn.Module):
        def forward(self, xs):
            return sum([F.relu_(t) for t in xs]) + F.relu(xs[0])

    model = nn.Sequential(Comprehension())
    with pytest.warns(UserWarning, match=r"'0' \(Comprehension\).*rewrite does not compile"):
        names = swap_activations(model, factory=twice)
    assert names == ["0.relu_1"]


def test_default_carelu_sites_equal_relu_bitwise():
    """The README's promise with the default factory: at the swap, CAReLU computes exactly ReLU."""
    for model, inputs in ((InPlace(), (x(3, 4),)), (Helpers(), (x(3, 4),)), (Shared(), (x(2, 3),))):
        swapped = copy.deepcopy(model)
        names = swap_activations(swapped)
        assert len(names) >= 3 and all(isinstance(swapped.get_submodule(n), CAReLU) for n in names)
        for mode in (True, False):
            model.train(mode), swapped.train(mode)
            with torch.no_grad():
                assert torch.equal(swapped(*inputs), model(*inputs))


def test_each_site_knows_its_name_and_the_factory_gets_what_it_replaces():
    model = nn.Sequential(nn.LeakyReLU(0.25), Shared())
    seen = {}

    def factory(old):
        module = CAReLU(alpha_init=getattr(old, "negative_slope", 0.0))
        seen[id(module)] = old
        return module

    names = swap_activations(model, (nn.LeakyReLU, nn.ReLU), factory=factory)
    assert names == ["0", "1.act", "1.inner.own", "1.inner.shared", "1.inner.own_1", "1.inner.relu", "1.act_1"]
    layers = {n: model.get_submodule(n) for n in names}
    assert all(layer.site_name == n for n, layer in layers.items())
    assert layers["0"].alpha.item() == 0.25
    olds = {n: seen[id(layer)] for n, layer in layers.items()}
    assert type(olds["1.inner.relu"]) is nn.ReLU and olds["1.act"] is olds["1.act_1"], "the module it replaced"


def test_exclude_a_functional_site_keeps_it_and_the_other_names():
    model = nn.Sequential(nn.Linear(4, 4), Imported())
    swapped = copy.deepcopy(model)
    names = swap_activations(swapped, exclude=r"^1\.relu_1$", factory=twice)
    assert names == ["1.relu", "1.relu_2", "1.relu_3", "1.relu_4"] and not hasattr(swapped[1], "relu_1")
    with torch.no_grad():  # relu_1 (torch.nn.functional.relu(x - 1)) stays ReLU: subtract its doubling
        expected_inner = model[1](model[0](x(2, 4)))
        with TwiceEveryReLU():
            doubled = model[1](model[0](x(2, 4)))
        once = torch.relu(model[0](x(2, 4)) - 1)
        assert torch.equal(swapped(x(2, 4)), doubled - 2 * once + once)
        assert not torch.equal(swapped(x(2, 4)), expected_inner)


def test_the_model_itself_as_a_target_is_refused():
    with pytest.raises(ValueError, match=r"the model itself \(ReLU\) is a target; swap inside a container"):
        swap_activations(nn.ReLU())


def test_a_refused_swap_undoes_rewritten_methods_and_added_modules():
    """The factory fails at the second module's call: the first module's rewrite and new module are undone."""
    model = nn.Sequential(Imported(), nn.ReLU(), TensorChecks())

    def factory(old):
        if len(made) == 6:
            return "not a module"
        made.append(1)
        return TwiceReLU()

    made: list[int] = []
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"factory returned str, not an nn\.Module, for '2\.relu'"):
        swap_activations(model, factory=factory)
    assert "forward" not in vars(model[0]) and not any(hasattr(model[0], f"relu{s}") for s in ("", "_1", "_4"))
    assert type(model[1]) is nn.ReLU and "forward" not in vars(model[2]) and not hasattr(model[2], "relu")
    assert [n for n, _ in model.named_modules()] == [n for n, _ in before.named_modules()]


def test_an_instance_attribute_forward_is_left_to_run():
    """A forward set on the instance (not the class) runs instead of the class's: it is not replaced."""
    model = TensorChecks()
    model.forward = lambda x: torch.relu(model.a(x)) * 3
    swap_activations(nn.Sequential(model, nn.ReLU()), factory=twice)
    with torch.no_grad():
        assert torch.equal(model(x(2, 4)), torch.relu(model.a(x(2, 4))) * 3)


def test_a_second_swap_keeps_the_first_swaps_rewrites():
    class Mixed(nn.Module):
        def forward(self, x):
            return F.gelu(F.relu(x) - 0.5) + F.relu(-x)

    model = Mixed()
    first = swap_activations(model, factory=twice)
    second = swap_activations(model, (nn.GELU,), factory=lambda old: TwiceReLU())
    assert first == ["relu", "relu_1"] and second == ["gelu"]
    with torch.no_grad():
        z = x(3, 4)
        assert torch.equal(model(z), 2 * torch.relu(2 * torch.relu(z) - 0.5) + 2 * torch.relu(-z))


def test_modules_whose_calls_need_no_rewrite_keep_their_forward():
    """One activation module per site (timm's ResNet): nothing is rewritten, no forward is replaced."""
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    assert len(swap_activations(model)) == 17
    assert not any(isinstance(vars(m).get("forward"), functools.partial) for m in model.modules())


def test_gradients_reach_every_site():
    torch.manual_seed(0)
    model = Helpers()
    names = swap_activations(model, factory=lambda old: CAReLU(alpha_init=0.3, beta_init=math.atanh(0.4)))
    model(x(3, 4)).sum().backward()
    for name in names:
        alpha = model.get_submodule(name).alpha
        assert alpha.grad is not None and alpha.grad.abs().item() > 0, name


@pytest.mark.parametrize("cls,inputs", [
    (InPlace, (x(3, 4),)), (Imported, (x(2, 4),)), (Helpers, (x(3, 4),)), (ExclusiveArms, (x(2, 4),)),
    (OptionalArguments, (x(3, 6),)), (lambda: make_closure_model(2.0), (x(2, 4),)),  # a local class: no pickle
])
@pytest.mark.slow
def test_rewritten_methods_pickle_copy_and_compile_fullgraph(cls, inputs):
    """What spawn workers, weight averaging and torch.compile do with a swapped model."""
    model = cls()
    swap_activations(model, factory=twice)
    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
        assert torch.equal(copy.deepcopy(model)(*inputs), expected)
        if "<locals>" not in type(model).__qualname__:
            assert torch.equal(pickle.loads(pickle.dumps(model))(*inputs), expected)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        assert torch.equal(compiled(*inputs), expected)
