"""Resume, validate from a checkpoint and load_checkpoint: CAReLU runs must round-trip exactly."""

from __future__ import annotations

import warnings
from pathlib import PurePosixPath

import fsspec
import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim import lr_scheduler

from caer_lightning import CAReLU, CAReLUCallback, load_checkpoint
from caer_lightning.callbacks.checkpoint_check import check_fits
from caer_lightning.checkpoint import read_checkpoint, restore_swaps
from caer_lightning.record import STATE_KIND, WEIGHTS_ONLY_KEY, layers_in_state_dict, rebuild_swaps, recorded_swaps
from caer_lightning.swap import swap_activations
from caer_lightning.models import TimmClassifier
from helpers import TinyNet, ValidatedTinyNet, loader, trainer


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.setdefault(trainer.current_epoch, []).append(outputs["loss"].item())


def carelu_values(model) -> dict[str, tuple[float, float]]:
    return {n: (m.alpha.item(), m.beta.item()) for n, m in model.named_modules() if isinstance(m, CAReLU)}


def cosine(optimizer):
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


def train(tmp_path, max_epochs: int, ckpt_path=None, optimizer_factory=None):
    seed_everything(0)
    model = TinyNet(scheduler_factory=cosine, optimizer_factory=optimizer_factory)
    recorder = LossRecorder()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    run = trainer(callbacks=[CAReLUCallback(lr_scale=5.0), recorder, checkpoints], max_epochs=max_epochs,
                  enable_checkpointing=True, deterministic=True)
    run.fit(model, loader(), ckpt_path=ckpt_path)
    return model, recorder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    model, recorder = train(directory, max_epochs=2)
    return model, recorder, directory


@pytest.fixture(scope="module")
def trained_adam(tmp_path_factory):
    directory = tmp_path_factory.mktemp("adam")
    model, recorder = train(directory, max_epochs=2, optimizer_factory=adam)
    return model, recorder, directory


def old_format(path, to):
    """The checkpoint at `path` as caer_lightning wrote it while α, β were 0-d parameters: α, β of shape (), and
    so their optimizer state (Adam's exp_avg and exp_avg_sq, SGD's momentum_buffer); 'step' was 0-d anyway.
    Returns how many tensors it turned 0-d."""
    checkpoint = torch.load(path, weights_only=False)
    changed = 0
    for key, value in checkpoint["state_dict"].items():
        if key.endswith((".alpha", ".beta")):
            assert value.shape == (1,)
            checkpoint["state_dict"][key], changed = value.reshape(()), changed + 1
    for optimizer in checkpoint["optimizer_states"]:
        (group,) = [g for g in optimizer["param_groups"] if g.get("name") == "carelu"]
        for index in group["params"]:
            state = optimizer["state"][index]
            for key, value in state.items():
                if key != "step":
                    assert value.shape == (1,)
                    state[key], changed = value.reshape(()), changed + 1
    torch.save(checkpoint, to)
    return changed


def test_resume_from_a_checkpoint_with_0d_alpha_beta_and_adam_state(trained_adam, tmp_path):
    model, recorder, directory = trained_adam
    old = tmp_path / "old.ckpt"
    assert old_format(directory / "epoch=0-step=4.ckpt", old) == 4 + 2 * 4  # α, β of 2 layers; exp_avg(_sq) each
    with pytest.warns(UserWarning, match="The dirpath has changed"):
        resumed, resumed_recorder = train(tmp_path / "run", max_epochs=2, ckpt_path=old, optimizer_factory=adam)
    assert resumed_recorder.losses[1] == recorder.losses[1]
    assert carelu_values(resumed) == carelu_values(model)
    assert all(m.alpha.shape == (1,) for m in resumed.modules() if isinstance(m, CAReLU))


def test_resume_from_a_checkpoint_with_0d_alpha_beta_and_sgd_momentum(trained, tmp_path):
    model, recorder, directory = trained
    old = tmp_path / "old.ckpt"
    assert old_format(directory / "epoch=0-step=4.ckpt", old) == 4 + 4  # α, β of 2 layers; momentum_buffer each
    with pytest.warns(UserWarning, match="The dirpath has changed"):
        resumed, resumed_recorder = train(tmp_path / "run", max_epochs=2, ckpt_path=old)
    assert resumed_recorder.losses[1] == recorder.losses[1]
    assert carelu_values(resumed) == carelu_values(model)


def test_load_checkpoint_and_restore_swaps_read_0d_alpha_beta(trained, tmp_path):
    model, _, directory = trained
    old = tmp_path / "old.ckpt"
    old_format(directory / "epoch=1-step=8.ckpt", old)
    x = loader(seed=2).dataset.tensors[0]
    with torch.no_grad():
        expected = model.eval()(x)
    for loaded in (load_checkpoint(TinyNet, old), RestoringNet.load_from_checkpoint(old)):
        assert carelu_values(loaded) == carelu_values(model)
        assert {m.alpha.shape for m in loaded.modules() if isinstance(m, CAReLU)} == {(1,)}
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), expected)


def test_upgrade_optimizer_state_leaves_scalar_state_and_other_shapes():
    from caer_lightning.optim import upgrade_optimizer_state

    one, weight = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.NAdam([one, weight])
    (one.sum() + weight.sum()).backward()
    optimizer.step()
    state = optimizer.state_dict()
    state["state"][0] = {k: v.reshape(()) if k != "step" else v for k, v in state["state"][0].items()}
    optimizer.load_state_dict(state)
    assert optimizer.state[one]["exp_avg"].shape == ()
    upgrade_optimizer_state(optimizer)
    assert {k: tuple(v.shape) for k, v in optimizer.state[one].items()} == {
        "step": (), "mu_product": (), "exp_avg": (1,), "exp_avg_sq": (1,)}
    assert optimizer.state[weight]["exp_avg"].shape == (3,)
    optimizer.step()


def test_resume_reproduces_the_uninterrupted_run(trained, tmp_path):
    model, recorder, directory = trained
    first_epoch = directory / "epoch=0-step=4.ckpt"
    with pytest.warns(UserWarning, match="The dirpath has changed"):  # resumed into another folder, on purpose
        resumed, resumed_recorder = train(tmp_path, max_epochs=2, ckpt_path=first_epoch)
    assert list(resumed_recorder.losses) == [1]
    assert resumed_recorder.losses[1] == recorder.losses[1]
    assert carelu_values(resumed) == carelu_values(model)
    assert carelu_values(model) != {n: (0.0, v[1]) for n, v in carelu_values(model).items()}, "α must have moved"


def test_checkpoint_records_the_swap(trained):
    _, _, directory = trained
    checkpoint = torch.load(directory / "epoch=1-step=8.ckpt", weights_only=False)
    states = [s for k, s in checkpoint["callbacks"].items() if k.startswith("CAReLUCallback")]
    assert len(states) == 1 and states[0]["swapped"] == ["net.2", "net.5"]
    assert states[0]["config"]["variant"] == "energy" and states[0]["config"]["K"] == 2.0
    assert {"net.2.alpha", "net.2.beta", "net.5.alpha", "net.5.beta"} <= set(checkpoint["state_dict"])


def test_validate_from_checkpoint_and_load_checkpoint_agree(trained):
    model, _, directory = trained
    path = directory / "epoch=1-step=8.ckpt"
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint") as record:
        metrics = trainer(callbacks=[CAReLUCallback(lr_scale=5.0)]).validate(ValidatedTinyNet(), loader(seed=1),
                                                                             ckpt_path=path)
    (missing,) = [str(w.message) for w in record if "callbacks used to create" in str(w.message)]
    assert "ModelCheckpoint" in missing and "CAReLUCallback" not in missing  # its state is found under its key

    loaded = load_checkpoint(ValidatedTinyNet, path).eval()
    assert carelu_values(loaded) == carelu_values(model)
    x, y = loader(n=64, batch_size=64, seed=1).dataset.tensors
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(loaded(x), y).item()
        assert torch.equal(loaded(x), model.eval()(x))
    assert metrics[0]["val_loss"] == pytest.approx(expected, rel=1e-5)

    callback = CAReLUCallback()  # a model that arrives already swapped is adopted as it is
    again = trainer(callbacks=[callback]).validate(loaded, loader(seed=1))
    assert callback.swapped == ["net.2", "net.5"] and again[0]["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_validate_without_the_callback_fails_loudly(trained):
    _, _, directory = trained
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"net.2.alpha\""):
        trainer().validate(ValidatedTinyNet(), loader(), ckpt_path=directory / "epoch=1-step=8.ckpt")


def test_load_checkpoint_is_strict(trained, tmp_path):
    _, _, directory = trained
    checkpoint = torch.load(directory / "epoch=1-step=8.ckpt", weights_only=False)
    del checkpoint["state_dict"]["net.5.beta"]
    torch.save(checkpoint, tmp_path / "tampered.ckpt")
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"net.5.beta\""):
        load_checkpoint(TinyNet, tmp_path / "tampered.ckpt")


def test_load_checkpoint_without_a_recorded_swap(tmp_path):
    run = trainer(max_steps=1, enable_checkpointing=True, default_root_dir=tmp_path)
    run.fit(TinyNet(), loader())
    path = tmp_path / "plain.ckpt"
    run.save_checkpoint(path)
    with pytest.raises(ValueError, match=r"records no CAReLUCallback swap.*TinyNet.load_from_checkpoint"):
        load_checkpoint(TinyNet, path)


def test_validate_with_another_include_says_what_the_checkpoint_holds(trained):
    _, _, directory = trained
    with pytest.raises(MisconfigurationException, match=(
        r"this checkpoint's CAReLU layers are not this model's.*holds alpha, beta of \['net\.2'\] that this model has "
        r"no CAReLU at.*written by: CAReLUCallback\(targets=.*include=None.*\) swapped \['net\.2', 'net\.5'\].*"
        r"caer_lightning\.load_checkpoint"
    )):
        trainer(callbacks=[CAReLUCallback(include=r"net\.5")]).validate(
            ValidatedTinyNet(), loader(), ckpt_path=directory / "epoch=1-step=8.ckpt"
        )


class RestoringNet(TinyNet):
    def on_load_checkpoint(self, checkpoint):
        restore_swaps(self, checkpoint)


def test_restore_swaps_makes_load_from_checkpoint_rebuild_the_model(trained):
    model, _, directory = trained
    loaded = RestoringNet.load_from_checkpoint(directory / "epoch=1-step=8.ckpt").eval()
    assert carelu_values(loaded) == carelu_values(model)
    x = loader(seed=2).dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_refit_with_another_configuration_records_what_the_layers_hold(tmp_path):
    """The layers keep the configuration they were swapped with; the checkpoint records that, not the second
    callback's, and load_checkpoint rebuilds the model that was trained."""
    model = TinyNet()
    trainer(callbacks=[CAReLUCallback()], max_steps=2).fit(model, loader())
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    with pytest.warns(UserWarning, match=(
        r"CAReLUCallback\(variant='l1', reduction='sample', K=3\.0, eps=1e-06, params='layer'\): the model already "
        r"holds CAReLU layers configured otherwise.*net\.2 \(variant='energy', reduction='sample', K=2\.0, eps=1e-06, "
        r"params='layer'\)"
    )):
        trainer(callbacks=[CAReLUCallback(variant="l1", K=3.0), checkpoints], max_steps=2,
                enable_checkpointing=True).fit(model, loader())
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    (state,) = [s for k, s in checkpoint["callbacks"].items() if k.startswith("CAReLUCallback")]
    assert state["layers"]["net.5"] == {"variant": "energy", "reduction": "sample", "K": 2.0, "eps": 1e-6,
                                        "params": "layer", "num_channels": None}
    loaded = load_checkpoint(TinyNet, tmp_path / "last.ckpt").eval()
    assert (loaded.net[2].variant, loaded.net[2].K) == ("energy", 2.0)
    x = loader(seed=3).dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.slow
def test_timm_classifier_load_from_checkpoint_rebuilds_the_swap(tmp_path):
    """Our own LightningModule restores the swap in on_load_checkpoint: its load_from_checkpoint just works."""
    model = TimmClassifier("resnet18", num_classes=4, cifar_stem=True)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer(callbacks=[CAReLUCallback(variant="count"), checkpoints], max_steps=2, enable_checkpointing=True,
            limit_val_batches=1).fit(model, loader(), loader(n=8))
    loaded = TimmClassifier.load_from_checkpoint(tmp_path / "last.ckpt").eval()
    assert carelu_values(loaded) == carelu_values(model) and len(carelu_values(loaded)) == 17
    assert {m.variant for m in loaded.modules() if isinstance(m, CAReLU)} == {"count"}
    x = loader(seed=4).dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_load_checkpoint_rebuilds_a_swap_made_with_include(tmp_path):
    model = TinyNet()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer(callbacks=[CAReLUCallback(include=r"net\.5", variant="l1"), checkpoints], max_steps=2,
            enable_checkpointing=True).fit(model, loader())
    loaded = load_checkpoint(TinyNet, tmp_path / "last.ckpt").eval()
    assert list(carelu_values(loaded)) == ["net.5"] and isinstance(loaded.net[2], torch.nn.ReLU)
    x = loader(seed=5).dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_layers_in_a_state_dict_are_told_from_other_modules_with_alpha_and_beta():
    class Scaled(torch.nn.Module):  # a user's own layer with parameters named alpha and beta
        def __init__(self) -> None:
            super().__init__()
            self.alpha, self.beta = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.zeros(1))

    model = torch.nn.Sequential(Scaled(), CAReLU(), torch.nn.ReLU())
    state = {**model.state_dict(), "2.alpha": torch.zeros(()), "2.beta": torch.zeros(()), "3.alpha": torch.ones(())}
    assert layers_in_state_dict(state, model) == ["1", "2"]


def test_layers_in_a_state_dict_leave_out_modules_with_either_parameter_name():
    """A module of the model with a parameter named alpha or beta (not both) is still not a CAReLU layer."""
    class OnlyAlpha(torch.nn.Module):  # parameter alpha, buffer beta: its state dict holds both names
        def __init__(self) -> None:
            super().__init__()
            self.alpha = torch.nn.Parameter(torch.ones(1))
            self.register_buffer("beta", torch.zeros(1))

    class OnlyBeta(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.beta = torch.nn.Parameter(torch.ones(1))
            self.register_buffer("alpha", torch.zeros(1))

    model = torch.nn.Sequential(OnlyAlpha(), OnlyBeta(), torch.nn.Sequential(CAReLU()))
    assert set(model.state_dict()) == {"0.alpha", "0.beta", "1.alpha", "1.beta", "2.0.alpha", "2.0.beta"}
    assert layers_in_state_dict(model.state_dict(), model) == ["2.0"]


def swap_state(callback: CAReLUCallback, swapped: list[str], **extra) -> dict:
    """The state a checkpoint records for `callback` (its real `config`), as `record` reads it."""
    return {"kind": STATE_KIND, "config": callback.config, "swapped": swapped, **extra}


def test_recorded_swaps_reads_weights_only_checkpoints_and_skips_other_states():
    ours = swap_state(CAReLUCallback(), ["net.2", "net.5"])
    second = swap_state(CAReLUCallback(include="net.5"), ["net.5"])
    weights_only = {"state_dict": {}, WEIGHTS_ONLY_KEY: [ours]}  # no "callbacks" key at all
    assert recorded_swaps(weights_only) == [ours]
    full = {"callbacks": {"ModelCheckpoint{}": {"kind": "other"}, "CAReLUCallback{}": second, "x": "not a dict"},
            WEIGHTS_ONLY_KEY: [ours, {"kind": "other"}]}
    assert recorded_swaps(full) == [second, ours]
    assert recorded_swaps({"state_dict": {}}) == []


def test_rebuild_swaps_honours_the_recorded_exclude():
    model = TinyNet()
    state = swap_state(CAReLUCallback(exclude="net.2", variant="l1"), ["net.5"],
                       layers={"net.5": {"variant": "l1", "reduction": "sample", "K": 2.0, "eps": 1e-6}})
    assert rebuild_swaps(model, [state]) == ["net.5"]
    assert type(model.net[2]) is torch.nn.ReLU and model.net[5].variant == "l1"


def test_rebuild_swaps_honours_the_recorded_targets():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.GELU())
    state = swap_state(CAReLUCallback(targets="torch.nn.GELU"), ["3"])
    assert rebuild_swaps(model, [state]) == ["3"]
    assert type(model[1]) is torch.nn.ReLU and isinstance(model[3], CAReLU)


def test_rebuild_swaps_without_recorded_layers_builds_them_from_the_config():
    """A state that records no per-layer configuration: each layer is built with the callback's CAReLU arguments."""
    model = TinyNet()
    state = swap_state(CAReLUCallback(variant="l1", reduction="channel", K=3.0, alpha_init=0.25, beta_init=0.5,
                                      eps=1e-4), ["net.2", "net.5"])
    assert "layers" not in state
    assert rebuild_swaps(model, [state]) == ["net.2", "net.5"]
    for layer in (model.net[2], model.net[5]):
        assert (layer.variant, layer.reduction, layer.K, layer.eps) == ("l1", "channel", 3.0, 1e-4)
        assert (layer.alpha.item(), layer.beta.item()) == (0.25, 0.5)


def test_restore_swaps_without_a_recorded_swap_returns_the_layers_the_module_has():
    swapped = TinyNet()
    swap_activations(swapped)
    assert restore_swaps(swapped, {"state_dict": swapped.state_dict()}) == ["net.2", "net.5"]
    assert restore_swaps(TinyNet(), {"state_dict": {}}) == []


def test_load_checkpoint_passes_kwargs_accepts_strict_and_hides_only_the_alpha_beta_warning(trained):
    class AnnouncingNet(TinyNet):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            warnings.warn(f"AnnouncingNet built with lr={self.hparams.lr}", UserWarning)

    model, _, directory = trained
    with pytest.warns(UserWarning, match=r"AnnouncingNet built with lr=0\.5") as record:
        loaded = load_checkpoint(AnnouncingNet, directory / "epoch=1-step=8.ckpt", lr=0.5, strict=True)
    assert not [w for w in record if "Found keys that are not in the model state dict" in str(w.message)]
    assert loaded.hparams.lr == 0.5 and carelu_values(loaded) == carelu_values(model)


def test_load_checkpoint_reads_an_fsspec_url(trained):
    model, _, directory = trained
    memory = fsspec.filesystem("memory")
    url = "memory://caer-test/epoch=1-step=8.ckpt"
    try:
        memory.pipe(url, (directory / "epoch=1-step=8.ckpt").read_bytes())
        assert read_checkpoint(url)["state_dict"].keys() == model.state_dict().keys()
        assert carelu_values(load_checkpoint(TinyNet, url)) == carelu_values(model)
    finally:
        memory.rm("memory://caer-test", recursive=True)


def test_read_checkpoint_maps_tensors_written_on_a_gpu_to_the_cpu(trained, tmp_path, monkeypatch):
    """A checkpoint whose tensors were saved from CUDA (location tag 'cuda:0') loads on the CPU."""
    model, _, directory = trained
    checkpoint = torch.load(directory / "epoch=1-step=8.ckpt", weights_only=False)
    with monkeypatch.context() as patched:  # tag every storage as a CUDA one, as a GPU run writes them
        patched.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, tmp_path / "gpu.ckpt")
    read = read_checkpoint(tmp_path / "gpu.ckpt")
    assert {value.device.type for value in read["state_dict"].values()} == {"cpu"}
    assert torch.equal(read["state_dict"]["net.5.alpha"], checkpoint["state_dict"]["net.5.alpha"])
    loaded = load_checkpoint(TinyNet, tmp_path / "gpu.ckpt")
    assert carelu_values(loaded) == carelu_values(model)


def test_load_checkpoint_reads_checkpoints_holding_more_than_tensors(trained, tmp_path):
    """Another callback's state may hold any object; with weights_only=False for Lightning, load_checkpoint loads."""
    model, _, directory = trained
    checkpoint = torch.load(directory / "epoch=1-step=8.ckpt", weights_only=False)
    checkpoint["callbacks"]["DataState"] = {"root": PurePosixPath("/data/run")}
    torch.save(checkpoint, tmp_path / "objects.ckpt")
    assert read_checkpoint(tmp_path / "objects.ckpt")["callbacks"]["DataState"] == {"root": PurePosixPath("/data/run")}
    loaded = load_checkpoint(TinyNet, tmp_path / "objects.ckpt", weights_only=False)
    assert carelu_values(loaded) == carelu_values(model)


def test_check_fits_says_what_each_side_holds():
    swapped = TinyNet()
    swap_activations(swapped)  # CAReLU at net.2, net.5
    partly = TinyNet()
    swap_activations(partly, include="net.5")
    states = {  # two recorded swaps (configurations cut short) and another callback's state
        "A": {"kind": STATE_KIND, "config": {"targets": ["torch.nn.ReLU"], "include": "net.5", "K": 3.0},
              "swapped": ["net.5"]},
        "B": {"kind": "other"},
        "C": {"kind": STATE_KIND, "config": {"targets": ["torch.nn.GELU"], "include": None}, "swapped": []},
    }
    with pytest.raises(MisconfigurationException) as error:
        check_fits(swapped, {"state_dict": partly.state_dict(), "callbacks": states})
    written_by = ("CAReLUCallback(targets=['torch.nn.ReLU'], include='net.5', K=3.0) swapped ['net.5']; "
                  "CAReLUCallback(targets=['torch.nn.GELU'], include=None) swapped []")
    assert str(error.value) == (
        "CAReLUCallback: this checkpoint's CAReLU layers are not this model's, so its weights cannot be loaded. "
        "The checkpoint holds alpha, beta of no other layer that this model has no CAReLU at, and none for its "
        f"CAReLU layers ['net.2']. It was written by: {written_by}. Run with the same CAReLUCallback settings, "
        "or load the trained model with caer_lightning.load_checkpoint(YourModule, path)."
    )
    with pytest.raises(MisconfigurationException) as error:
        check_fits(TinyNet(), {"state_dict": swapped.state_dict()})
    assert str(error.value) == (
        "CAReLUCallback: this checkpoint's CAReLU layers are not this model's, so its weights cannot be loaded. "
        "The checkpoint holds alpha, beta of ['net.2', 'net.5'] that this model has no CAReLU at, and none for its "
        "CAReLU layers (none). It was written by: no CAReLUCallback swap. Run with the same CAReLUCallback "
        "settings, or load the trained model with caer_lightning.load_checkpoint(YourModule, path)."
    )


def test_check_fits_passes_matching_non_strict_and_state_less_checkpoints():
    swapped = TinyNet()
    swap_activations(swapped)
    assert check_fits(swapped, {"state_dict": swapped.state_dict()}) is None
    assert check_fits(swapped, {}) is None  # nothing to load: Lightning reports that itself
    lenient = TinyNet()
    lenient.strict_loading = False  # the module loads non-strictly: the checkpoint's extra alpha, beta are dropped
    assert check_fits(lenient, {"state_dict": swapped.state_dict()}) is None
