"""Every private reach of `caer_lightning._compat`, named, against the installed versions: what it reaches is
there and behaves as relied on, and when it is gone the user gets an error naming the version, never lost α, β."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import StochasticWeightAveraging, WeightAveraging
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim import lr_scheduler

from caer_lightning import CAReLUCallback, _compat
from helpers import TinyNet

LIGHTNING = ".".join(map(str, _compat.installed_version("lightning")))
TORCH = ".".join(map(str, _compat.installed_version("torch")))


def test_every_reach_is_named_in_this_file():
    source = Path(__file__).read_text()
    for constant, name in zip(("SPAWN_RECOVERY", "SWA_COPY", "EMA_COPY", "LAST_LR", "CHILD_SCHEDULERS",
                               "SCHEDULER_LISTS", "TRANSFORMER_FAST_PATH", "MODULE_CALL", "SHARDED", "TRITON_JIT",
                               "AUTOGRAD_SAVED", "SAVED_TENSOR_HOOKS"),
                              _compat.REACHES):
        assert getattr(_compat, constant) == name
        assert f"_compat.{constant}" in source.replace("test_every_reach_is_named_in_this_file", ""), name


def test_missing_names_the_package_version_and_what_is_lost():
    message = str(_compat.missing(_compat.SPAWN_RECOVERY, "gone"))
    assert f"lightning {LIGHTNING} has no" in message and "_recover_results_in_main_process (gone)" in message
    assert "_recover_results_in_main_process; it was" in str(_compat.missing(_compat.SPAWN_RECOVERY))  # no detail
    assert "checked on lightning 2.4-2.6" in message and "Not supported with this version: spawn/fork" in message
    assert ".".join(map(str, _compat.installed_version("torch"))) == torch.__version__.split("+")[0]
    assert _compat.installed_version("no-such-package-here") == (0,)


def test_version_check_below_the_oldest_version(monkeypatch):
    assert _compat.supported(_compat.EMA_COPY)
    monkeypatch.setattr(_compat, "installed_version", lambda package: (2, 4, 0))
    assert not _compat.supported(_compat.EMA_COPY)  # WeightAveraging came with Lightning 2.5
    assert _compat.supported(_compat.SWA_COPY)


# _compat.SPAWN_RECOVERY
def test_spawn_recovery_wraps_the_launcher_once():
    assert _compat.install_spawn_recovery() and _compat.install_spawn_recovery()
    launchers = _compat.multiprocessing_launcher_classes()
    assert [launcher.__module__ for launcher in launchers] == [  # both Lightning packages keep their own
        "lightning.pytorch.strategies.launchers.multiprocessing", "pytorch_lightning.strategies.launchers.multiprocessing"]
    for launcher in launchers:
        method = launcher._recover_results_in_main_process
        assert method._caer_lightning and _compat.spawn_recovery_installed()
        assert list(inspect.signature(method).parameters)[:3] == ["self", "worker_output", "trainer"]
    assert _compat.uses_multiprocessing(Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, logger=False))
    assert not _compat.uses_multiprocessing(Trainer(accelerator="cpu", devices=1, logger=False))


def test_spawn_strategy_without_the_recovery_is_refused_before_training(monkeypatch):
    class Launcher:  # a Lightning whose launcher lacks the method
        pass

    monkeypatch.setattr(_compat, "multiprocessing_launcher_classes", lambda: [Launcher])
    assert not _compat.install_spawn_recovery()
    callback = CAReLUCallback()
    assert callback.spawn_recovery is False
    trainer = Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, logger=False, callbacks=[callback])
    monkeypatch.setattr(_compat, "uses_multiprocessing", lambda trainer: True)
    with pytest.raises(MisconfigurationException, match=f"lightning {LIGHTNING} has no .*use strategy='ddp'"):
        callback.setup(trainer, TinyNet(), "fit")


# _compat.SWA_COPY, _compat.EMA_COPY
@pytest.mark.parametrize("make,reach", [(lambda: StochasticWeightAveraging(swa_lrs=0.1), "StochasticWeightAveraging"),
                                        (lambda: WeightAveraging(), "WeightAveraging")], ids=["swa", "ema"])
def test_averaged_model_of_weight_averaging_callbacks(make, reach):
    callback = make()
    assert _compat.averaged_model(callback) is None  # before its setup
    model = TinyNet()
    callback._average_model = torch.optim.swa_utils.AveragedModel(model)
    assert _compat.averaged_model(callback) is callback._average_model.module  # the copy, unwrapped
    callback._average_model = model
    assert _compat.averaged_model(callback) is model
    callback._average_model = "not a model"
    assert _compat.averaged_model(callback) is None
    del callback._average_model
    message = f"lightning {LIGHTNING} has no lightning.pytorch.callbacks.{reach}._average_model \\({reach} holds no"
    with pytest.raises(_compat.MissingPrivateAPI, match=message):
        _compat.averaged_model(callback)


def _two_groups() -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.ones(1))]}, {"params": [nn.Parameter(torch.ones(1))]}],
                           lr=0.1, momentum=0.9)


SCHEDULERS = {
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 1.0),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.9),
    "StepLR": lambda o: lr_scheduler.StepLR(o, 1),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, [1]),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, 5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 5),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, 0.1, total_steps=10),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o),
}


# _compat.LAST_LR, _compat.SCHEDULER_LISTS
@pytest.mark.parametrize("name", sorted(_compat.EXPECTED_LISTS))
def test_each_torch_scheduler_keeps_the_per_group_lists_relied_on(name):
    scheduler = SCHEDULERS[name](_two_groups())
    found = dict(_compat.scheduler_group_lists(scheduler))
    assert set(_compat.EXPECTED_LISTS[name]) <= set(found)
    assert all(len(values) == 2 for values in found.values()), found  # one entry per param group


def test_a_missing_scheduler_list_is_an_error_naming_torch():
    scheduler = lr_scheduler.StepLR(_two_groups(), 1)
    del scheduler._last_lr
    with pytest.raises(_compat.MissingPrivateAPI, match=f"torch {TORCH} has no .*_last_lr.*StepLR._last_lr"):
        list(_compat.scheduler_group_lists(scheduler))
    plateau = lr_scheduler.ReduceLROnPlateau(_two_groups())
    del plateau.min_lrs
    with pytest.raises(_compat.MissingPrivateAPI, match="ReduceLROnPlateau.min_lrs"):
        list(_compat.scheduler_group_lists(plateau))


# _compat.CHILD_SCHEDULERS
def test_child_schedulers_of_sequential_and_chained():
    optimizer = _two_groups()
    first, second = lr_scheduler.LinearLR(optimizer), lr_scheduler.StepLR(optimizer, 1)
    sequential = lr_scheduler.SequentialLR(optimizer, [first, second], milestones=[2])
    assert _compat.child_schedulers(sequential) == [first, second]
    assert _compat.child_schedulers(lr_scheduler.ChainedScheduler([first, second])) == [first, second]
    assert _compat.child_schedulers(first) == []
    chained = lr_scheduler.ChainedScheduler([first, second])
    for scheduler in (sequential, chained):
        del scheduler._schedulers
        with pytest.raises(_compat.MissingPrivateAPI, match=f"{type(scheduler).__name__} keeps no _schedulers"):
            _compat.child_schedulers(scheduler)


# _compat.TRANSFORMER_FAST_PATH
def test_transformer_fast_path_flag():
    relu = nn.TransformerEncoderLayer(8, 2, activation="relu")
    assert _compat.fast_path_flag(relu) and not _compat.fast_path_flag(
        nn.TransformerEncoderLayer(8, 2, activation=torch.tanh))
    assert _compat.fast_path_flag(nn.Linear(2, 2)) is None
    _compat.set_fast_path_flag(relu, 0)
    assert relu.activation_relu_or_gelu == 0
    del relu.activation_relu_or_gelu
    with pytest.raises(_compat.MissingPrivateAPI,
                       match=f"torch {TORCH} has no .*\\(TransformerEncoderLayer has no activation_relu_or_gelu\\)"):
        _compat.fast_path_flag(relu)


# _compat.SHARDED (on sharded models, with DTensors: tests/test_fsdp.py)
def test_sharding_types_on_plain_tensors_and_below_the_oldest_version(monkeypatch):
    plain = nn.Sequential(nn.Linear(2, 2))
    weight = plain[0].weight
    assert not _compat.is_sharded(weight) and _compat.full_value(weight) is weight
    assert _compat.sharded_modules(plain) == []
    from torch.distributed.fsdp import FSDPModule  # the class relied on is where it is looked up
    from torch.distributed.tensor import DTensor

    assert hasattr(DTensor, "full_tensor") and isinstance(FSDPModule, type)
    monkeypatch.setattr(_compat, "installed_version", lambda package: (2, 5, 0))
    assert not _compat.supported(_compat.SHARDED) and _compat._sharding_types() is None


# _compat.MODULE_CALL
def test_forward_pre_hooks_are_called_through_the_module_call_files_only():
    files = _compat.module_call_files()
    seen = []

    def hook(module, args):
        frame = inspect.currentframe().f_back
        while frame is not None and frame.f_code.co_name != "caller":
            seen.append(frame.f_code.co_filename)
            frame = frame.f_back

    def caller():
        return layer(torch.zeros(1))

    layer = nn.ReLU()
    layer.register_forward_pre_hook(hook)
    caller()
    assert seen and set(seen) <= files, set(seen) - files


# _compat.TRITON_JIT
def test_triton_jit_internals_missing_is_named():
    pytest.importorskip("triton")

    class Kernel:  # a JITFunction of a Triton that has no _pack_args
        signature, params = None, []

    with pytest.raises(_compat.MissingPrivateAPI, match="triton .* has no .*create_function_from_signature"):
        _compat.compile_launch_for_gpu(Kernel(), (), {}, 90)


# _compat.AUTOGRAD_SAVED (the rebuild it serves: tests/test_recompute.py)
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_node_keeps_input_statistics_and_weight_as_read(train):
    bn = nn.BatchNorm2d(3).train(train)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    u = torch.randn(4, 3, 5, 5, requires_grad=True)
    running_var = bn.running_var.clone()
    node = bn(u).grad_fn
    assert node.name() in _compat.BATCH_NORM_NODES and _compat.node_has_saved(node)
    saved = _compat.batch_norm_saved(node)
    assert saved.input is u or torch.equal(saved.input, u)
    assert torch.equal(saved.weight, bn.weight) and saved.eps == bn.eps
    if train:  # batch mean and inverse std, recomputed here
        torch.testing.assert_close(saved.mean, u.detach().mean((0, 2, 3)))
        torch.testing.assert_close(saved.invstd, torch.rsqrt(u.detach().var((0, 2, 3), unbiased=False) + bn.eps))
    else:
        assert saved.mean.numel() == 0 and torch.equal(_compat.batch_norm_running(node)[1], running_var)
    assert _compat.leaf_variable(node.next_functions[2][0]) is bn.bias
    assert _compat.leaf_variable(node.next_functions[0][0]) is u  # u is a leaf too
    assert _compat.leaf_variable(node) is None and _compat.leaf_variable(None) is None  # not an AccumulateGrad
    before = _compat.version(bn.bias)
    with torch.no_grad():
        bn.bias.add_(1.0)
    assert _compat.version(bn.bias) == before + 1


def test_add_and_relu_nodes_keep_alpha_and_result():
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    assert _compat.add_alpha(torch.add(a, b, alpha=2).grad_fn) == 2
    out = torch.relu(a)
    assert torch.equal(_compat.relu_result(out.grad_fn), out)
    assert [t.data_ptr() for t in _compat.kept_for_backward(out)] == [out.data_ptr()]


def test_a_node_without_the_attributes_read_warns_and_is_not_used():
    class NodeOfAnotherTorch:  # a batch-norm node that keeps its values under other names
        def name(self):
            return "NativeBatchNormBackward0"

    with pytest.warns(UserWarning, match=f"torch {TORCH} has no .*NativeBatchNormBackward0 has no _saved_input"):
        assert not _compat.node_has_saved(NodeOfAnotherTorch())


# _compat.SAVED_TENSOR_HOOKS
def test_saved_tensor_hooks_in_effect_are_seen():
    if not _compat.supported(_compat.SAVED_TENSOR_HOOKS):
        assert _compat.saved_tensor_hooks_active() is None
        return
    assert _compat.saved_tensor_hooks_active() is False
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert _compat.saved_tensor_hooks_active() is True
    with torch.autograd.graph.save_on_cpu():
        assert _compat.saved_tensor_hooks_active() is True


def test_a_torch_from_2_8_without_the_hook_query_warns_and_keeps_inputs(monkeypatch):
    import types

    monkeypatch.setattr(_compat, "_AUTOGRAD", types.SimpleNamespace())
    monkeypatch.setattr(_compat, "installed_version", lambda package: (2, 8, 0))
    _compat._hook_query.cache_clear()
    try:
        with pytest.warns(UserWarning, match="torch 2.8.0 has no torch._C._autograd._top_saved_tensors_default_hooks"):
            assert _compat.saved_tensor_hooks_active() is None
    finally:
        _compat._hook_query.cache_clear()
