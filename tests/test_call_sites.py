"""Every activation call site gets its own CAReLU: modules called at several places, functional calls in
forward, function attributes. Real models (torchvision, nn.Transformer, Lightning's demo, Hugging Face)."""

from __future__ import annotations

import copy
import io
import types
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos import Transformer
from torch import nn

from caer_lightning import CAReLU, CAReLUCallback, load_checkpoint, swap_activations
from helpers import NUM_CLASSES, SPAWN_TEARDOWN_RERUN, loader, trainer


def carelu_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, CAReLU)]


def same_outputs_after_swap(model: nn.Module, x: torch.Tensor, **kwargs) -> list[str]:
    """Swap a copy of `model`; its outputs must equal the original's exactly, in eval and in train mode."""
    swapped = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "shared parameters" warning, no tracing warning
        names = swap_activations(swapped, **kwargs)
    for mode in (False, True):
        model.train(mode), swapped.train(mode)
        torch.manual_seed(0)
        expected = model(x)
        torch.manual_seed(0)
        assert torch.equal(swapped(x), expected), f"outputs differ (train={mode})"
    return names


def test_torchvision_resnet18_every_call_site_has_its_own_module():
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    names = same_outputs_after_swap(model, torch.randn(2, 3, 32, 32))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert names == ["relu"] + [f"{b}.{site}" for b in blocks for site in ("relu", "relu_1")]
    swapped = copy.deepcopy(model)
    swap_activations(swapped)
    modules = [swapped.get_submodule(n) for n in names]
    assert len({id(m) for m in modules}) == 17 and all(isinstance(m, CAReLU) for m in modules)
    assert swap_activations(swapped) == [], "idempotent"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_torchvision_functional_relu(name):
    """BasicConv2d.forward applies F.relu(x, inplace=True); there is no ReLU module at all."""
    model = getattr(torchvision.models, name)(init_weights=True, aux_logits=False, num_classes=NUM_CLASSES)
    size = 75 if name == "inception_v3" else 32
    names = same_outputs_after_swap(model, torch.randn(2, 3, size, size))
    convs = [n for n, m in model.named_modules() if type(m).__name__ == "BasicConv2d"]
    assert names == [f"{n}.relu" for n in convs] and len(convs) > 50


@pytest.mark.slow
def test_torchvision_mobilenet_v2_relu6():
    model = torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES)
    names = same_outputs_after_swap(model, torch.randn(2, 3, 32, 32), targets=(nn.ReLU6,))
    assert len(names) == 35 == sum(isinstance(m, nn.ReLU6) for m in model.modules())


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_function_attribute(activation):
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation=activation, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    target = nn.ReLU if activation == "relu" else nn.GELU
    swapped = copy.deepcopy(model)
    names = swap_activations(swapped, target, factory=lambda old: CAReLU(reduction="token"))
    assert names == ["layers.0.activation", "layers.1.activation"]
    assert all(layer.activation_relu_or_gelu == 0 for layer in swapped.layers), "the fast path would skip CAReLU"
    x = torch.randn(3, 5, 16)
    for mode in (False, True):
        model.train(mode), swapped.train(mode)
        with torch.no_grad():  # eval + no_grad is where the fast path would run
            if activation == "relu":
                assert torch.equal(swapped(x), model(x))
            else:  # GELU → CAReLU changes the function; every layer's CAReLU runs
                calls = []
                hooks = [swapped.get_submodule(n).register_forward_hook(lambda *a: calls.append(1)) for n in names]
                swapped(x)
                assert len(calls) == 2
                for hook in hooks:
                    hook.remove()


class FunctionalCalls(nn.Module):
    """Research-code style: torch.relu, Tensor.relu, and an in-place F.relu_ whose result is read from its input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        y = self.b(x)
        F.relu_(y)  # in place: the lines below read y
        z = y * 2 - 0.1
        return self.c(z.relu() - y)


def test_functional_calls_in_forward_each_get_a_module():
    model = FunctionalCalls()
    names = same_outputs_after_swap(model, torch.randn(5, 4))
    assert names == ["relu", "relu_1", "relu_2"]


def test_include_exclude_apply_to_call_sites():
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    names = same_outputs_after_swap(model, torch.randn(2, 3, 32, 32), exclude=r"relu_1$")
    assert names == ["relu"] + [f"layer{i}.{j}.relu" for i in range(1, 5) for j in range(2)]
    swapped = copy.deepcopy(model)
    swap_activations(swapped, exclude=r"relu_1$")
    assert type(swapped.layer1[0].relu_1) is nn.ReLU, "the excluded site keeps its activation, in a module of its own"


@pytest.mark.parametrize("target", [nn.PReLU, nn.Linear])
def test_a_target_holding_parameters_is_refused_and_the_model_left_as_it_was(target):
    """Replacing it would drop its weights (timm's BatchNormAct2d, nn.PReLU): refused, naming it, and every
    change made before the refusal (a function attribute, a rewritten forward) is undone."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    held = nn.PReLU() if target is nn.PReLU else nn.Linear(8, 8)
    relu = nn.ReLU()
    model = nn.Sequential(layer, FunctionalConvNet(), relu, held)
    flag = layer.activation_relu_or_gelu
    with pytest.raises(ValueError, match=rf"{target.__name__}: '[\w.]+' holds parameters or buffers \(weight"):
        swap_activations(model, (nn.ReLU, target))
    assert carelu_names(model) == [] and layer.activation is F.relu
    assert layer.activation_relu_or_gelu == flag, "the fast path is restored"
    assert "forward" not in vars(model[1]) and not hasattr(model[1], "relu")
    assert model[2] is relu and model[3] is held


class FunctionalModule(pl.LightningModule):
    """A LightningModule around a network whose forward calls F.relu (no activation modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = FunctionalConvNet()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class FunctionalConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x)) + x
        return self.head(x.mean((2, 3)))


def test_callback_on_functional_model_trains_and_round_trips(tmp_path):
    model = FunctionalModule()
    callback = CAReLUCallback(lr_scale=1.0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*called from several places")
        trainer(callbacks=[callback, checkpoints], max_steps=3, enable_checkpointing=True).fit(model, loader())
    assert callback.swapped == ["net.relu", "net.relu_1"]
    assert model.net.relu.alpha.item() != 0.0 and model.net.relu_1.alpha.item() != 0.0
    loaded = load_checkpoint(FunctionalModule, tmp_path / "last.ckpt")
    assert carelu_names(loaded) == ["net.relu", "net.relu_1"]
    x = next(iter(loader()))[0]
    assert torch.equal(loaded.eval()(x), model.eval()(x))


@pytest.mark.slow
def test_rewritten_model_copies_pickles_and_compiles_fullgraph():
    model = FunctionalConvNet()
    swap_activations(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert torch.equal(copy.deepcopy(model)(x), expected)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), expected)
    for name in ("relu", "relu_1"):  # exported graphs hold the sites (as plain ops), not the original ReLUs
        getattr(model, name).beta.data.fill_(0.9)
    changed = model(x)
    exported = torch.export.export(model.eval(), (x,))
    torch.testing.assert_close(exported.module()(x), changed)
    assert not torch.allclose(changed, expected)
    model.head = nn.Linear(8, NUM_CLASSES)  # the rewritten forward calls the module's current children
    assert not torch.equal(model(x), changed)


class DemoTransformer(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=20, ninp=16, nhead=2, nhid=32, nlayers=1)

    def training_step(self, batch, batch_idx):
        tokens = batch[0]
        output = self.model(tokens[:, :-1], tokens[:, 1:])
        return F.nll_loss(output, tokens[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_lightning_demo_transformer_trains_with_the_callback():
    tokens = torch.randint(0, 20, (32, 9), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=8)
    model, callback = DemoTransformer(), CAReLUCallback(reduction="token")
    trainer(callbacks=[callback], max_steps=3).fit(model, data)
    assert callback.swapped == [
        "model.transformer.encoder.layers.0.activation", "model.transformer.decoder.layers.0.activation",
    ]
    assert all(model.get_submodule(n).alpha.item() != 0.0 for n in callback.swapped)


def test_hugging_face_bert_with_gelu_targets_trains():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2,
    )

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertForSequenceClassification(config)

        def training_step(self, batch, batch_idx):
            ids, labels = batch
            return self.bert(input_ids=ids, labels=labels).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    generator = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 50, (16, 8), generator=generator), torch.randint(0, 2, (16,), generator=generator)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, labels), batch_size=8)
    model = Classifier()
    callback = CAReLUCallback(targets=("torch.nn.GELU",), reduction="token")
    trainer(callbacks=[callback], max_steps=3).fit(model, data)
    assert callback.swapped == [
        f"bert.bert.encoder.layer.{i}.intermediate.intermediate_act_fn.act" for i in range(2)
    ]
    assert all(model.get_submodule(n).alpha.item() != 0.0 for n in callback.swapped)


def test_hugging_face_save_pretrained_round_trip(tmp_path):
    """save_pretrained keeps the swap record in config.json; caer_lightning.pretrained.from_pretrained rebuilds
    the CAReLU layers (with their own configuration) and loads their alpha, beta; a plain from_pretrained does not."""
    transformers = pytest.importorskip("transformers")
    from caer_lightning.pretrained import from_pretrained

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2,
    )
    holder = nn.Module()  # swapped from outside, as a LightningModule would: names in the record are the model's
    holder.bert = transformers.BertForSequenceClassification(config).eval()
    names = swap_activations(holder, ("torch.nn.GELU",), factory=lambda old: CAReLU(reduction="token", variant="l1"))
    for name in names:
        torch.nn.init.normal_(holder.get_submodule(name).alpha)
    holder.bert.save_pretrained(tmp_path)
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = holder.bert(ids).logits
        plain = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
        assert not torch.equal(plain(ids).logits, expected), "plain from_pretrained drops the swap"
        loaded = from_pretrained(transformers.BertForSequenceClassification, tmp_path).eval()
        assert torch.equal(loaded(ids).logits, expected)
    layers = [n for n, m in loaded.named_modules() if isinstance(m, CAReLU)]
    assert [f"bert.{n}" for n in layers] == names
    assert all(loaded.get_submodule(n).variant == "l1" for n in layers)
    with pytest.raises(ValueError, match=r"records no CAReLU swap"):
        fresh = transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "caer_lightning"})
        transformers.BertForSequenceClassification(fresh).save_pretrained(tmp_path / "plain")
        from_pretrained(transformers.BertForSequenceClassification, tmp_path / "plain")
    holder.bert.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    (tmp_path / "bin").mkdir()  # the format older transformers saved by default
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "config.json").read_text())
    torch.save(holder.bert.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for form in ("sharded", "bin"):
        with torch.no_grad():
            again = from_pretrained(transformers.BertForSequenceClassification, tmp_path / form).eval()
            assert torch.equal(again(ids).logits, expected), form


class PretrainedLike(nn.Module):
    """What the record needs of a Hugging Face model: `save_pretrained` and a `config` with `to_dict`."""

    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(to_dict=dict)
        self.net = FunctionalConvNet()

    def save_pretrained(self, path):  # pragma: no cover - never called
        raise NotImplementedError


def test_the_pretrained_record_names_each_layer_relative_to_its_model():
    holder = nn.Sequential(nn.ReLU(), PretrainedLike())
    swap_activations(holder, factory=lambda old: CAReLU(variant="count", K=3.0))
    record = holder[1].config.caer_lightning["layers"]
    relu = "torch.nn.modules.activation.ReLU"
    expected = {"replaces": relu, "variant": "count", "reduction": "sample", "K": 3.0, "eps": 1e-6,
                "params": "layer", "num_channels": None}
    assert record == {"net.relu": expected, "net.relu_1": expected}


@pytest.mark.slow
@SPAWN_TEARDOWN_RERUN
def test_ddp_spawn_with_rewritten_call_sites(tmp_path):
    """Two gloo ranks train the traced call sites; the main process ends with the workers' α, β."""
    from test_lightning_interplay import SaveRankZeroModel

    model = FunctionalModule()
    run = trainer(devices=2, strategy="ddp_spawn", max_steps=2,
                  callbacks=[CAReLUCallback(lr_scale=1.0), SaveRankZeroModel(str(tmp_path / "worker.pt"))])
    run.fit(model, loader())
    worker = torch.load(tmp_path / "worker.pt")
    assert carelu_names(model) == ["net.relu", "net.relu_1"]
    assert worker["net.relu_1.alpha"].item() != 0.0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in worker.items())
