"""Every reach into a private or undocumented part of torch, Lightning or Triton, in one place.

Each reach is listed in `REACHES` with the package, the versions it was checked on, and what depends on it;
`tests/test_compat.py` names each one. None fails silently: when what it reaches is gone, the caller gets a
`MissingPrivateAPI` error (or a warning, where carrying on loses nothing) naming the installed version and what
is not supported with it. Imports of Lightning and Triton happen inside the functions that need them, so the
core (ops, functional, module, swap) can use this module with torch alone.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class MissingPrivateAPI(RuntimeError):
    """A private API caer_lightning relies on is not in the installed version of its package."""


@dataclass(frozen=True)
class Reach:
    """One private or undocumented name used, the package and versions it was checked on, and what needs it."""

    name: str
    package: str
    since: tuple[int, ...]  # the oldest version of `package` that has it in the form used
    checked: str  # the versions it was checked on
    needed_for: str


REACHES: dict[str, Reach] = {
    reach.name: reach
    for reach in (
        Reach(
            "lightning.pytorch.strategies.launchers.multiprocessing._MultiProcessingLauncher"
            "._recover_results_in_main_process", "lightning", (2, 0), "2.4-2.6",
            "spawn/fork strategies (ddp_spawn, ddp_notebook): the main process's model gets the CAReLU layers "
            "before Lightning loads the trained weights into it non-strictly",
        ),
        Reach(
            "lightning.pytorch.callbacks.StochasticWeightAveraging._average_model", "lightning", (2, 0), "2.4-2.6",
            "swapping the averaged copy StochasticWeightAveraging takes in its setup when it is listed before "
            "CAReLUCallback",
        ),
        Reach(
            "lightning.pytorch.callbacks.WeightAveraging._average_model", "lightning", (2, 5), "2.5-2.6",
            "swapping the averaged copy WeightAveraging (EMA) takes in its setup when it is listed before "
            "CAReLUCallback",
        ),
        Reach(
            "torch.optim.lr_scheduler.LRScheduler._last_lr", "torch", (1, 4), "2.4-2.14",
            "scheduling the carelu group from the step it is added (the scheduler's last lr per group)",
        ),
        Reach(
            "torch.optim.lr_scheduler.SequentialLR._schedulers", "torch", (1, 10), "2.4-2.14",
            "reaching the schedulers inside SequentialLR and ChainedScheduler",
        ),
        Reach(
            "torch.optim.lr_scheduler per-group lists: lr_lambdas, min_lrs, max_lrs, base_momentums, max_momentums",
            "torch", (1, 4), "2.4-2.14",
            "scheduling the carelu group under LambdaLR/MultiplicativeLR, ReduceLROnPlateau and CyclicLR",
        ),
        Reach(
            "torch.nn.TransformerEncoderLayer.activation_relu_or_gelu", "torch", (1, 12), "2.4-2.14",
            "turning off the fast path of a Transformer layer whose activation was swapped (it would run a "
            "built-in activation instead of the CAReLU)",
        ),
        Reach(
            "torch.nn.modules.module (nn.Module.__call__ runs forward hooks from this file)", "torch", (2, 0),
            "2.4-2.14",
            "the first training step's probe of where each CAReLU is called from",
        ),
        Reach(
            "torch.distributed.tensor.DTensor (full_tensor) and torch.distributed.fsdp.FSDPModule", "torch", (2, 6),
            "2.14",
            "FSDP2 (fully_shard): reading the sharded alpha, beta of CAReLU layers for the dashboards and guards, "
            "and telling a model that configure_model sharded from a plain one",
        ),
        Reach(
            "triton.runtime.jit.create_function_from_signature, JITFunction._pack_args, triton.compiler.ASTSource",
            "triton", (3, 3), "3.3-3.8",
            "tests only: compiling the kernels ahead of time for sm_80/sm_90 exactly as the JIT would at launch",
        ),
        Reach(
            "autograd nodes' saved values: _saved_input, _saved_weight, _saved_result1, _saved_result2, "
            "_saved_running_mean, _saved_running_var, _saved_eps/_saved_epsilon of NativeBatchNormBackward0, "
            "CudnnBatchNormBackward0 and MiopenBatchNormBackward0; _saved_alpha of AddBackward0; _saved_result of "
            "ReluBackward0; AccumulateGrad.variable; Tensor._version; any node's _saved_* (counting what autograd "
            "keeps, "
            "benchmarks/activation_memory.py)", "torch", (2, 0), "2.7-2.14",
            "recomputing a CAReLU's input in backward from what the BatchNorm, residual sum or activation before it "
            "keeps (without it each CAReLU keeps its input too: 1.37x ReLU's saved bytes on ResNet-18)",
        ),
        Reach(
            "torch._C._autograd._top_saved_tensors_default_hooks", "torch", (2, 8), "2.14",
            "telling whether saved-tensor hooks (torch.utils.checkpoint, save_on_cpu) are in effect, under which "
            "CAReLU keeps its input rather than unpack values those hooks hold (before torch 2.8 it always keeps it)",
        ),
    )
}

SPAWN_RECOVERY, SWA_COPY, EMA_COPY, LAST_LR, CHILD_SCHEDULERS, SCHEDULER_LISTS, TRANSFORMER_FAST_PATH, \
    MODULE_CALL, SHARDED, TRITON_JIT, AUTOGRAD_SAVED, SAVED_TENSOR_HOOKS = REACHES


def installed_version(package: str) -> tuple[int, ...]:
    """The installed version of `package` as numbers ((0,) when it is not installed)."""
    if package == "torch":
        text = torch.__version__
    else:
        try:
            text = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return (0,)
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def missing(reach_name: str, what: str = "") -> MissingPrivateAPI:
    """The error for a reach whose target is gone: package, installed version, what it was checked on, and what
    is not supported."""
    reach = REACHES[reach_name]
    version = ".".join(map(str, installed_version(reach.package)))
    detail = f" ({what})" if what else ""
    return MissingPrivateAPI(
        f"caer_lightning: {reach.package} {version} has no {reach.name}{detail}; it was checked on "
        f"{reach.package} {reach.checked}. Not supported with this version: {reach.needed_for}."
    )


def supported(reach_name: str) -> bool:
    """Whether the installed version is at least the oldest that has the reach's target (the version check)."""
    reach = REACHES[reach_name]
    return installed_version(reach.package) >= reach.since


# --- Lightning: spawn/fork strategies -------------------------------------------------------------------------

SPAWN_PREPARE_HOOK = "before_main_process_loads_weights"


# The Lightning packages a Trainer can come from: the `lightning` distribution's and the standalone one.
LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def multiprocessing_launcher_classes() -> list[type]:
    """The launcher for spawn/fork strategies of each Lightning package that has one by that name (the
    standalone `pytorch_lightning` keeps its own copy)."""
    if not supported(SPAWN_RECOVERY):
        return []
    found = []
    for package in LIGHTNING_PACKAGES:
        try:
            module = importlib.import_module(f"{package}.strategies.launchers.multiprocessing")
        except ImportError:
            continue
        launcher = getattr(module, "_MultiProcessingLauncher", None)
        if isinstance(launcher, type):
            found.append(launcher)
    return found


def uses_multiprocessing(trainer: Any) -> bool:
    """Whether `trainer` (of either Lightning package) trains in spawned or forked worker processes."""
    launcher = getattr(trainer.strategy, "launcher", None)
    classes = tuple(multiprocessing_launcher_classes())
    if classes:
        return isinstance(launcher, classes)
    return type(launcher).__name__ == "_MultiProcessingLauncher"


def install_spawn_recovery() -> bool:
    """Let callbacks that define `before_main_process_loads_weights(trainer)` prepare the main process's model
    before Lightning's spawn/fork launcher loads the worker's trained weights into it non-strictly (without it,
    keys the main model lacks, such as α and β, are dropped in silence), in both Lightning packages. Returns
    whether it is installed in every one; when it cannot be, `spawn_recovery_installed()` says so and
    `CAReLUCallback` refuses spawn/fork strategies.

    Installed when a CAReLUCallback is built: the main process runs no callback hook before it launches the
    workers, so this is the last point at which it knows a recovery will be needed. It acts only for trainers
    whose callbacks define the hook.
    """
    launchers = multiprocessing_launcher_classes()
    return bool(launchers) and all([_wrap_recovery(launcher) for launcher in launchers])


def _wrap_recovery(launcher_class: type) -> bool:
    original = getattr(launcher_class, "_recover_results_in_main_process", None)
    if original is None:
        return False
    if getattr(original, "_caer_lightning", False):
        return True
    parameters = list(inspect.signature(original).parameters)
    if parameters[:3] != ["self", "worker_output", "trainer"]:
        return False

    def recover(self: Any, worker_output: Any, trainer: Any) -> None:
        if getattr(worker_output, "weights_path", None) is not None:
            for callback in trainer.callbacks:
                prepare = getattr(callback, SPAWN_PREPARE_HOOK, None)
                if callable(prepare):
                    prepare(trainer)
        original(self, worker_output, trainer)

    recover._caer_lightning = True  # type: ignore[attr-defined]
    launcher_class._recover_results_in_main_process = recover
    return True


def spawn_recovery_installed() -> bool:
    launchers = multiprocessing_launcher_classes()
    return bool(launchers) and all(
        getattr(getattr(launcher, "_recover_results_in_main_process", None), "_caer_lightning", False)
        for launcher in launchers
    )


# --- Lightning: weight-averaging callbacks ----------------------------------------------------------------------


def averaged_model(callback: Any) -> nn.Module | None:
    """The model copy a StochasticWeightAveraging or WeightAveraging callback holds (None before its setup).
    Raises MissingPrivateAPI when this Lightning keeps it elsewhere."""
    swa = any(base.__name__ == "StochasticWeightAveraging" for base in type(callback).__mro__)  # either package's
    reach = SWA_COPY if swa else EMA_COPY
    if not (supported(reach) and hasattr(callback, "_average_model")):
        raise missing(reach, f"{type(callback).__name__} holds no _average_model")
    copy = callback._average_model
    module = getattr(copy, "module", copy)  # torch.optim.swa_utils.AveragedModel wraps the copy
    return module if isinstance(module, nn.Module) else None


# --- torch: LR schedulers ---------------------------------------------------------------------------------------

# Per-group values a scheduler keeps in lists: scaled by the new group's lr ratio, or copied as they are.
SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")
SCHEDULER_COPIED_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")
# The lists each torch scheduler holds (what `extend_scheduler` must find; a missing one is an error).
EXPECTED_LISTS: dict[str, tuple[str, ...]] = {
    "LambdaLR": ("base_lrs", "_last_lr", "lr_lambdas"),
    "MultiplicativeLR": ("base_lrs", "_last_lr", "lr_lambdas"),
    "StepLR": ("base_lrs", "_last_lr"),
    "MultiStepLR": ("base_lrs", "_last_lr"),
    "ConstantLR": ("base_lrs", "_last_lr"),
    "LinearLR": ("base_lrs", "_last_lr"),
    "ExponentialLR": ("base_lrs", "_last_lr"),
    "PolynomialLR": ("base_lrs", "_last_lr"),
    "CosineAnnealingLR": ("base_lrs", "_last_lr"),
    "CosineAnnealingWarmRestarts": ("base_lrs", "_last_lr"),
    "CyclicLR": ("base_lrs", "_last_lr", "max_lrs"),
    "OneCycleLR": ("base_lrs", "_last_lr"),
    "ReduceLROnPlateau": ("min_lrs",),
}


def child_schedulers(scheduler: object) -> list:
    """The schedulers inside a SequentialLR or ChainedScheduler ([] for any other)."""
    name = type(scheduler).__name__
    children = getattr(scheduler, "_schedulers", None)
    if name in ("SequentialLR", "ChainedScheduler") and isinstance(scheduler, _torch_scheduler_types()):
        if not isinstance(children, (list, tuple)):
            raise missing(CHILD_SCHEDULERS, f"{name} keeps no _schedulers list")
    return list(children) if isinstance(children, (list, tuple)) else []


def scheduler_group_lists(scheduler: object) -> Iterator[tuple[str, list]]:
    """(attribute, list) for each per-group list `scheduler` keeps. For torch's own schedulers, a list this
    version lacks raises MissingPrivateAPI (the carelu group would go unscheduled)."""
    name = type(scheduler).__name__
    if isinstance(scheduler, _torch_scheduler_types()) and type(scheduler).__module__.startswith("torch."):
        for attribute in EXPECTED_LISTS.get(name, ()):
            if not isinstance(getattr(scheduler, attribute, None), list):
                reach = LAST_LR if attribute == "_last_lr" else SCHEDULER_LISTS
                raise missing(reach, f"{name}.{attribute}")
    for attribute in SCHEDULER_LR_LISTS + SCHEDULER_COPIED_LISTS:
        values = getattr(scheduler, attribute, None)
        if isinstance(values, list):
            yield attribute, values


def _torch_scheduler_types() -> tuple[type, ...]:
    from torch.optim import lr_scheduler

    return tuple(t for t in (getattr(lr_scheduler, "LRScheduler", None), lr_scheduler.ReduceLROnPlateau) if t)


# --- torch: modules ---------------------------------------------------------------------------------------------

_FAST_PATH_FLAG = "activation_relu_or_gelu"


def fast_path_flag(owner: nn.Module) -> Any:
    """The flag with which a Transformer layer runs a built-in activation on its fast path (None if it has none).
    A torch Transformer layer without it raises MissingPrivateAPI: its fast path could bypass the CAReLU."""
    if isinstance(owner, nn.TransformerEncoderLayer) and _FAST_PATH_FLAG not in vars(owner):
        raise missing(TRANSFORMER_FAST_PATH, f"{type(owner).__name__} has no {_FAST_PATH_FLAG}")
    return vars(owner).get(_FAST_PATH_FLAG)


def set_fast_path_flag(owner: nn.Module, value: Any) -> None:
    setattr(owner, _FAST_PATH_FLAG, value)


def module_call_files() -> frozenset[str]:
    """The files of nn.Module's call machinery, which a forward pre-hook's caller frames pass through."""
    import torch.nn.modules.module as module_file

    return frozenset({inspect.getfile(module_file)})


# --- torch: FSDP2 (fully_shard) ---------------------------------------------------------------------------------


def _sharding_types() -> tuple[type, type] | None:
    """(DTensor, FSDPModule), or None where this torch has no FSDP2 in that form (then nothing is sharded)."""
    if not (supported(SHARDED) and torch.distributed.is_available()):
        return None
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor, FSDPModule


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor (a parameter of a module sharded with fully_shard, outside its forward)."""
    types = _sharding_types()
    return types is not None and isinstance(tensor, types[0])


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s whole value as a plain tensor: a DTensor's full tensor (a collective: every rank of its mesh
    must call it at the same point), any other tensor as it is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def sharded_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules of `model` that fully_shard has sharded ("" for the root)."""
    types = _sharding_types()
    if types is None:
        return []
    return [name for name, module in model.named_modules() if isinstance(module, types[1])]


# --- torch: autograd nodes (recomputing CAReLU's input) ---------------------------------------------------------

# Batch-norm backward nodes and the name of their eps: result1 is the batch mean and result2 the inverse standard
# deviation 1/sqrt(var + eps) (native: save_invstd; cuDNN and MIOpen: "save_var", their saved inverse variance);
# both are empty when the layer normalised with its running statistics.
BATCH_NORM_NODES = {
    "NativeBatchNormBackward0": "_saved_eps",
    "CudnnBatchNormBackward0": "_saved_epsilon",
    "MiopenBatchNormBackward0": "_saved_epsilon",
}
_BATCH_NORM_SAVED = ("_saved_input", "_saved_weight", "_saved_result1", "_saved_result2", "_saved_running_mean",
                     "_saved_running_var")
_NODE_ATTRIBUTES: dict[type, bool] = {}  # node type -> whether it has the attributes read from it


@dataclass(frozen=True)
class BatchNormSaved:
    """What a batch-norm node keeps for its own backward (the running statistics: `batch_norm_running`)."""

    input: torch.Tensor
    weight: torch.Tensor | None
    mean: torch.Tensor  # empty when normalised with the running statistics
    invstd: torch.Tensor
    eps: float


def node_has_saved(node: Any) -> bool:
    """Whether `node` (a batch-norm, add or ReLU node) has the saved-value attributes read from it here. Asked
    in forward: looks at the names only (reading a value would unpack it). Missing ones warn once: that input is
    kept for backward instead (nothing else is lost)."""
    kind = type(node)
    if kind not in _NODE_ATTRIBUTES:
        name = node.name()
        wanted = {"AddBackward0": ("_saved_alpha",), "ReluBackward0": ("_saved_result",)}.get(
            name, (*_BATCH_NORM_SAVED, BATCH_NORM_NODES.get(name, "")))
        names = set(dir(node))
        absent = [attribute for attribute in wanted if attribute not in names]
        _NODE_ATTRIBUTES[kind] = not absent
        if absent:
            from caer_lightning.rank_zero import rank_zero_warn

            rank_zero_warn(str(missing(AUTOGRAD_SAVED, f"{name} has no {', '.join(absent)}")))
    return _NODE_ATTRIBUTES[kind]


def saved_tensor_hooks_active() -> bool | None:
    """Whether saved-tensor hooks are in effect here (None before torch 2.8, which cannot tell). A torch from 2.8
    on without the query warns once (MissingPrivateAPI's message) and answers None."""
    query = _hook_query()
    return None if query is None else query(False) is not None


_AUTOGRAD = torch._C._autograd


@functools.cache
def _hook_query() -> Any:
    if not supported(SAVED_TENSOR_HOOKS):
        return None
    query = getattr(_AUTOGRAD, "_top_saved_tensors_default_hooks", None)
    if query is None:
        from caer_lightning.rank_zero import rank_zero_warn

        rank_zero_warn(str(missing(SAVED_TENSOR_HOOKS)))
    return query


def batch_norm_saved(node: Any) -> BatchNormSaved:
    """The values a batch-norm node (one of BATCH_NORM_NODES) keeps. Read in backward only."""
    return BatchNormSaved(node._saved_input, node._saved_weight, node._saved_result1, node._saved_result2,
                          float(getattr(node, BATCH_NORM_NODES[node.name()])))


def batch_norm_running(node: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(running mean, running variance) a batch-norm node keeps (what it normalised with in eval mode)."""
    return node._saved_running_mean, node._saved_running_var


def add_alpha(node: Any) -> Any:
    """The `alpha` of an AddBackward0 node (a + alpha·b)."""
    return node._saved_alpha


def relu_result(node: Any) -> torch.Tensor:
    """The output a ReluBackward0 node keeps. Read in backward only."""
    return node._saved_result


def kept_for_backward(output: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the autograd graph behind `output` keeps for backward: the `_saved_*` values of its nodes and
    the saved tensors of custom Function nodes (such as CAReLU's op). For measuring memory, not for training."""
    kept, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        values = list(node.saved_tensors) if hasattr(node, "saved_tensors") else []
        values += [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
        for value in values:
            kept += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, torch.Tensor)]
        stack += [child for child, _ in node.next_functions]
    return kept


def version(tensor: torch.Tensor) -> int:
    """How many times `tensor` was modified in place (autograd's version counter)."""
    return tensor._version


def leaf_variable(edge_node: Any) -> torch.Tensor | None:
    """The tensor an AccumulateGrad node accumulates into (a leaf: a parameter), None for any other node."""
    if edge_node is None or edge_node.name() != "torch::autograd::AccumulateGrad":
        return None
    return edge_node.variable


# --- Triton (tests only) ----------------------------------------------------------------------------------------


def compile_launch_for_gpu(kernel: Any, args: tuple, kwargs: dict, capability: int) -> Any:
    """Compile one recorded kernel launch for a CUDA GPU of `capability` (e.g. 90) exactly as the JIT would at
    launch: its binder derives the specialization (ints equal to 1 become constants, ints divisible by 16 and
    16-byte aligned pointers get `tt.divisibility`). Raises MissingPrivateAPI when this Triton lacks a piece."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as error:
        raise missing(TRITON_JIT, str(error)) from None
    if not hasattr(kernel, "_pack_args"):
        raise missing(TRITON_JIT, "JITFunction._pack_args")
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


__all__ = [
    "MissingPrivateAPI", "REACHES", "Reach", "averaged_model", "child_schedulers", "compile_launch_for_gpu",
    "fast_path_flag", "full_value", "install_spawn_recovery", "installed_version", "is_sharded", "missing",
    "module_call_files", "scheduler_group_lists", "set_fast_path_flag", "sharded_modules", "spawn_recovery_installed",
    "supported", "uses_multiprocessing",
]
