"""FSDP2 (`fully_shard`) on CPU with 2 gloo ranks: a swapped model sharded per block and at the root trains like
one process, its α, β survive a torch.distributed.checkpoint round trip, the callback's optimizer group, lr ratio,
statistics and guards work on the sharded (DTensor) parameters (`_compat.SHARDED`), and Lightning's
ModelParallelStrategy gets the order of swap and sharding right or says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.optim.lr_scheduler import StepLR

import caer_lightning
from caer_lightning import CAReLU, _compat, carelu_param_groups, dashboard, swap_activations
from caer_lightning.callbacks.lr_group import CAReLUGroup
from caer_lightning.callbacks.monitor import Monitor
from helpers import SPAWN_TEARDOWN_RERUN, block_cnn, synthetic_dataset

WORLD = 2
BATCH = 8  # per rank; one process takes WORLD * BATCH
STEPS = 3
LAYERS = ["0.1", "1.1"]


def swapped(seed: int = 0, params: str = "layer") -> nn.Sequential:
    """block_cnn with CAReLU layers: one α, β each, or one per channel (8: created at once, as FSDP2 needs)."""
    model = block_cnn(seed)
    factory = None if params == "layer" else lambda old: CAReLU(params="channel", num_channels=8)
    assert swap_activations(model, factory=factory) == LAYERS
    return model


def shard(model: nn.Sequential) -> nn.Sequential:
    for block in model:
        fully_shard(block)
    fully_shard(model)
    return model


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = synthetic_dataset(WORLD * BATCH * STEPS).tensors
    size = WORLD * BATCH
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def layers(model: nn.Module) -> dict[str, CAReLU]:
    return {name: module for name, module in model.named_modules() if isinstance(module, CAReLU)}


def optimizer_for(model: nn.Module, kind: str) -> tuple[torch.optim.Optimizer, StepLR | None, CAReLUGroup | None]:
    """sgd: the groups of `carelu_param_groups`; adam: one group, then the callback's CAReLUGroup moves α, β into
    a group of their own at 3× the lr, held there while a StepLR halves the lr every step."""
    if kind == "sgd":
        return torch.optim.SGD(carelu_param_groups(model, torch.optim.SGD, lr=0.2), lr=0.2, momentum=0.9), None, None
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    group = CAReLUGroup(lr_scale=3.0)
    group.attach([optimizer], [scheduler], model, layers(model))
    return optimizer, scheduler, group


def train(model: nn.Module, kind: str, rank: int | None = None, reduce=lambda t: t, loss_scale: float = 1.0) -> dict:
    """STEPS steps on `batches()` (rank r takes its half of each batch), with the callback's Monitor logging
    every step; `loss_scale` multiplies the loss (the gradients). Returns what the run logged and its optimizer."""
    optimizer, scheduler, group = optimizer_for(model, kind)
    monitor, logged = Monitor(), []
    monitor.start(layers(model), every=1)
    for step, (x, y) in enumerate(batches()):
        if rank is not None:
            x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
        monitor.begin_step(step)
        (loss_scale * F.cross_entropy(model(x), y)).backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
            group.keep_ratios()
        monitor.end_step(step + 1, reduce, rank in (None, 0), lambda metrics, at: logged.append(metrics))
    return {"logged": logged, "optimizer": optimizer, "monitor": monitor}


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's whole value (a collective on a sharded model)."""
    return {name: _compat.full_value(p.detach()).clone() for name, p in model.named_parameters()}


# --- run in each of the WORLD processes -----------------------------------------------------------------------


def _run(rank: int, directory: str, worker: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=WORLD)
    try:
        torch.save(globals()[worker](rank, *args), f"{directory}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(tmp_path: Path, worker: str, *args) -> list[dict]:
    torch.multiprocessing.spawn(_run, args=(str(tmp_path), worker, args), nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _reduce_sum(table: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(table)
    return table


def train_sharded(rank: int, kind: str, params: str = "layer") -> dict:
    model = shard(swapped(params=params))
    alpha = model[0][1].alpha
    sharding = {"dtensor": _compat.is_sharded(alpha), "local_shape": tuple(alpha.to_local().shape),
                "sharded_modules": _compat.sharded_modules(model)}
    run = train(model, kind, rank, _reduce_sum)
    optimizer = run["optimizer"]
    carelu_group = next(g for g in optimizer.param_groups if g.get("name") == "carelu")
    held = [p for m in layers(model).values() for p in (m.alpha, m.beta)]
    final = dashboard.parameters(run["monitor"].modules)  # every rank: gathers α, β (as the callback's on_train_end)
    return {
        **sharding,
        "parameters": full_parameters(model),
        "logged": run["logged"],
        "lrs": [g["lr"] for g in optimizer.param_groups],
        "group_holds_the_sharded_parameters": [id(p) for p in carelu_group["params"]] == [id(p) for p in held],
        "dashboard": final,
        "summary": run["monitor"].summary(final) if rank == 0 else "",  # rank zero keeps the history
        "repr": repr(model[0][1]),
    }


def dcp_round_trip(rank: int, directory: str) -> dict:
    """Train, save model and optimizer with torch.distributed.checkpoint, load them into a fresh sharded model (other
    weights, α = 0), and take one more step with both."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = shard(swapped())
    optimizer = train(model, "adam", rank, _reduce_sum)["optimizer"]
    saved = full_parameters(model)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=f"{directory}/dcp")

    fresh = shard(swapped(seed=1))
    fresh_optimizer = optimizer_for(fresh, "adam")[0]
    before_load = full_parameters(fresh)
    model_state, optimizer_state = get_state_dict(fresh, fresh_optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=f"{directory}/dcp")
    set_state_dict(fresh, fresh_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    loaded = full_parameters(fresh)

    x, y = (t[rank * BATCH : (rank + 1) * BATCH] for t in batches()[0])
    for m, o in ((model, optimizer), (fresh, fresh_optimizer)):
        F.cross_entropy(m(x), y).backward()
        o.step()
    return {"saved": saved, "before_load": before_load, "loaded": loaded,
            "next_step": full_parameters(model), "next_step_loaded": full_parameters(fresh)}


def gloo_average_sums() -> bool:
    """True where gloo's reduce-scatter with ReduceOp.AVG returns the sum (pytorch/pytorch#162338, fixed in
    pytorch/pytorch#171458): FSDP2 then sums the ranks' gradients instead of averaging them, in any model."""
    out = torch.empty(1)
    dist.reduce_scatter_tensor(out, torch.ones(WORLD), op=dist.ReduceOp.AVG)
    return out.item() == WORLD


def sharded_runs(rank: int, directory: str) -> dict:
    """Everything the tests below check, in one start of the processes (each start costs seconds)."""
    return {"sgd": train_sharded(rank, "sgd"), "adam": train_sharded(rank, "adam"),
            "channel": train_sharded(rank, "adam", "channel"), "dcp": dcp_round_trip(rank, directory),
            "gloo_average_sums": gloo_average_sums()}


def one_process(sharded: list[dict], kind: str, params: str = "layer") -> tuple[dict, dict]:
    """The same training on one process, and its final parameters. Where this torch's gloo sums the gradients
    of the ranks instead of averaging them (`gloo_average_sums`; torch 2.7 does), one process takes WORLD times
    the loss: what the sharded run then computes, CAReLU or not (a plain ReLU model differs from one process by
    exactly that too)."""
    model = swapped(params=params)
    run = train(model, kind, loss_scale=WORLD if sharded[0]["gloo_average_sums"] else 1.0)
    return run, full_parameters(model)


# --- the tests ------------------------------------------------------------------------------------------------

pytestmark = pytest.mark.slow  # every test here spawns 2 ranks (the shared spawn alone takes about 20 s)

@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> list[dict]:
    directory = tmp_path_factory.mktemp("fsdp")
    return spawn(directory, "sharded_runs", str(directory))


@SPAWN_TEARDOWN_RERUN
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_sharded_training_matches_one_process(kind, sharded):
    ranks = [rank[kind] for rank in sharded]
    one, expected = one_process(sharded, kind)
    assert [r["dtensor"] for r in ranks] == [True, True] and [r["local_shape"] for r in ranks] == [(1,), (0,)]
    assert ranks[0]["sharded_modules"] == ["", "0", "1", "2"]
    for rank in ranks:
        assert rank["parameters"].keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(rank["parameters"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert (expected["0.1.alpha"] != 0).all(), "alpha must have trained, or the comparison proves little"

    # the callback's group holds the sharded α, β, at its lr ratio to the others
    ratio = {"sgd": 0.1, "adam": 3.0}[kind]  # SGD: carelu_param_groups' default; Adam: CAReLUGroup(lr_scale=3.0)
    for rank in ranks:
        assert rank["group_holds_the_sharded_parameters"]
        assert rank["lrs"] == pytest.approx([g["lr"] for g in one["optimizer"].param_groups])
        assert rank["lrs"][1] == pytest.approx(ratio * rank["lrs"][0])
    if kind == "adam":
        assert ranks[0]["lrs"][0] == pytest.approx(0.02 * 0.5**STEPS)  # the scheduler ran

    # statistics summed over ranks and α, β gathered: what one process logs for the whole batch
    assert len(ranks[0]["logged"]) == STEPS and ranks[1]["logged"] == []
    for sharded, single in zip(ranks[0]["logged"], one["logged"]):
        assert sharded.keys() == single.keys()
        for key, value in single.items():
            assert sharded[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    final = torch.stack([torch.cat((expected[f"{n}.alpha"], expected[f"{n}.beta"])) for n in LAYERS])
    for rank in ranks:  # dashboard.parameters: mean, then spread (0 for one value) and finite flag
        torch.testing.assert_close(rank["dashboard"][:, :2], final, rtol=1e-5, atol=1e-6)
        assert rank["dashboard"][:, 2:].tolist() == [[0.0, 0.0, 1.0]] * len(LAYERS)
        assert rank["repr"] == "CAReLU(variant='energy', reduction='sample', K=2, eps=1e-06, sharded)"  # no value read
    assert f"| {final[0, 0].item():.4g} | {final[0, 1].item():.4g} |" in ranks[0]["summary"]


@SPAWN_TEARDOWN_RERUN
def test_sharded_training_with_per_channel_parameters_matches_one_process(sharded):
    """(8,) α, β split 4 + 4 over the ranks: the same parameters, logged means and spreads as one process."""
    ranks = [rank["channel"] for rank in sharded]
    one, expected = one_process(sharded, "adam", "channel")
    assert [r["local_shape"] for r in ranks] == [(4,), (4,)]
    for rank in ranks:
        for name, value in expected.items():
            torch.testing.assert_close(rank["parameters"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert expected["0.1.alpha"].shape == (8,) and expected["0.1.alpha"].std() > 0, "the channels trained apart"
    assert "carelu/0.1/alpha_std" in one["logged"][-1]
    for sharded_step, single in zip(ranks[0]["logged"], one["logged"]):
        assert sharded_step.keys() == single.keys()
        for key, value in single.items():
            assert sharded_step[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert ranks[0]["repr"] == ("CAReLU(variant='energy', reduction='sample', K=2, eps=1e-06, params='channel', "
                                "num_channels=8, sharded)")


@SPAWN_TEARDOWN_RERUN
def test_distributed_checkpoint_round_trip_keeps_alpha_and_beta(sharded):
    ranks = [rank["dcp"] for rank in sharded]
    for rank in ranks:
        for name in ("0.1.alpha", "0.1.beta", "1.1.alpha", "1.1.beta"):
            assert not torch.equal(rank["before_load"][name], rank["saved"][name]), f"{name}: nothing to restore"
        for name, value in rank["saved"].items():
            assert torch.equal(rank["loaded"][name], value), name
        for name, value in rank["next_step"].items():  # Adam's state came back too
            assert torch.equal(rank["next_step_loaded"][name], value), name
    assert ranks[0]["saved"]["0.1.alpha"].shape == (1,)


# --- Lightning ----------------------------------------------------------------------------------------------------


def test_model_parallel_strategy_swaps_before_sharding_or_says_how(tmp_path):
    """tests/model_parallel_run.py: Lightning runs the script again as rank 1 (ModelParallelStrategy on CPU)."""
    script = Path(__file__).with_name("model_parallel_run.py")
    root = Path(caer_lightning.__file__).parents[1]
    path = os.pathsep.join([str(root), str(script.parent), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    for rank in ranks:
        # configure_model sharded the model before the callback could swap: stopped, with the way out
        assert rank["error"].startswith(
            "CAReLUCallback: the model was sharded with fully_shard (FSDP2; sharded modules: ['net', 'net.0', "
            "'net.1', 'net.2']) before this callback swapped ['net.0.1', 'net.1.1']"
        )
        assert "in configure_model, call caer_lightning.swap_activations(model, " \
               "['torch.nn.modules.activation.ReLU'], factory=lambda old: CAReLU(K=3.0)) on the model before " \
               "fully_shard" in rank["error"]
        # swapped in configure_model before fully_shard: the callback trains and logs the sharded layers
        assert rank["swapped"] == ["net.0.1", "net.1.1"] and rank["dtensor"]
        assert rank["group_names"] == [None, "carelu"]
        assert rank["lrs"][1] == pytest.approx(2.0 * rank["lrs"][0])
        assert rank["K"] == 3.0
        assert (rank["alpha"] != 0).all()
        assert torch.equal(rank["alpha"], ranks[0]["alpha"]) and torch.equal(rank["beta"], ranks[0]["beta"])
        # resumed from the distributed checkpoint Lightning wrote
        assert torch.equal(rank["resumed_alpha"], rank["alpha"]) and torch.equal(rank["resumed_beta"], rank["beta"])
    logged = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "carelu/net.1.1/alpha" in logged and "carelu/net.0.1/energy_ratio" in logged


# --- BatchNorm before CAReLU on a sharded model: the input rebuilt in backward from what the sharded BN keeps ---


def bn_swapped(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)),
    )
    swap_activations(model)
    with torch.no_grad():
        for module in layers(model).values():
            module.alpha.fill_(0.9), module.beta.fill_(-0.6)
    return model


def bn_gradients(rank: int) -> dict:
    """One step's full gradients of the sharded BN model, with the input rebuilt and with it kept."""
    x, y = batches()[0]
    x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
    result = {}
    for mode in ("1", "0"):
        os.environ["CAER_RECOMPUTE"] = mode
        model = shard(bn_swapped())
        recipes = []
        for module in layers(model).values():
            module.register_forward_hook(lambda m, i, out: recipes.append(out.grad_fn.recipe is not None))
        F.cross_entropy(model(x), y).backward()
        result[mode] = {"recipes": recipes, "grads": {n: _compat.full_value(p.grad).clone()
                                                      for n, p in model.named_parameters()}}
    return result


@SPAWN_TEARDOWN_RERUN
@pytest.mark.slow
@pytest.mark.skipif(_compat.saved_tensor_hooks_active() is None, reason="before torch 2.8 CAReLU keeps its input")
def test_sharded_batch_norm_input_rebuilt_gives_the_kept_input_gradients(tmp_path):
    for rank in spawn(tmp_path, "bn_gradients"):
        assert rank["1"]["recipes"] == [True, True] and rank["0"]["recipes"] == [False, False]
        assert rank["1"]["grads"].keys() == rank["0"]["grads"].keys()
        for name, value in rank["0"]["grads"].items():
            torch.testing.assert_close(rank["1"]["grads"][name], value, msg=name)
        assert rank["1"]["grads"]["0.2.alpha"].abs().sum() > 0
