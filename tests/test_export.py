"""From a CAReLU-trained model to production: ONNX (onnxruntime parity, dynamic batch), torch.export and
torch.jit.trace round trips, and the path from a checkpoint."""

from __future__ import annotations

import itertools
import warnings

import pytest
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from caer_lightning import CAReLU, CAReLUCallback, load_checkpoint, swap_activations
from caer_lightning.ops import REDUCTIONS, VARIANTS
from helpers import TinyNet, loader, trainer

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def trained_like(model: nn.Module) -> nn.Module:
    """Give every CAReLU α, β away from their init (so the export must carry them; per-channel ones differ by
    channel) and switch to eval."""
    for index, module in enumerate(m for m in model.modules() if isinstance(m, CAReLU)):
        channel = torch.arange(module.alpha.numel())
        with torch.no_grad():
            module.alpha.copy_(0.8 - 0.1 * index - 0.3 * channel)
            module.beta.copy_(0.1 + 0.05 * index + 0.1 * channel)
    return model.eval()


def onnx_outputs(model: nn.Module, example: torch.Tensor, path, batches=(1, 5)) -> dict[int, tuple]:
    """Export once with a dynamic batch dimension; run onnxruntime at each batch size against PyTorch."""
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = {}
    for size in batches:
        x = torch.randn(size, *example.shape[1:], generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            results[size] = (torch.from_numpy(session.run(None, {name: x.numpy()})[0]), model(x))
    return results


@pytest.mark.slow
def test_onnx_timm_resnet18_matches_pytorch(tmp_path):
    model = trained_like(timm.create_model("resnet18", num_classes=10))
    swap_activations(model)
    trained_like(model)
    for size, (onnx, torch_out) in onnx_outputs(model, torch.randn(5, 3, 32, 32), tmp_path / "r18.onnx").items():
        assert onnx.shape == (size, 10)
        torch.testing.assert_close(onnx, torch_out, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_token_reduction_vit_matches_pytorch(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10)
    swap_activations(model, nn.GELU, factory=lambda old: CAReLU(reduction="token"))
    trained_like(model)
    for size, (onnx, torch_out) in onnx_outputs(model, torch.randn(5, 3, 32, 32), tmp_path / "vit.onnx").items():
        assert onnx.shape == (size, 10)
        torch.testing.assert_close(onnx, torch_out, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("params", ["layer", "channel"])
@pytest.mark.parametrize("variant,reduction", list(itertools.product(VARIANTS, REDUCTIONS)))
def test_onnx_every_variant_and_reduction(variant, reduction, params, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), CAReLU(variant=variant, reduction=reduction, params=params),
                          nn.Conv2d(6, 4, 3))
    model(torch.randn(1, 3, 8, 8))  # creates per-channel α, β: 6 (sample, channel) or 8 (token: the last dim)
    trained_like(model)
    if params == "channel":
        assert len(set(model[1].alpha.tolist())) == model[1].num_channels > 1
    for size, (onnx, torch_out) in onnx_outputs(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx").items():
        assert onnx.shape == torch_out.shape and onnx.shape[0] == size
        torch.testing.assert_close(onnx, torch_out, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_exported_graph_needs_no_custom_op(tmp_path):
    import onnx

    model = trained_like(nn.Sequential(nn.Linear(4, 4), CAReLU(reduction="token")))
    torch.onnx.export(model, (torch.randn(3, 4),), str(tmp_path / "m.onnx"), dynamo=True)
    graph = onnx.load(str(tmp_path / "m.onnx"))
    domains = {node.domain for node in graph.graph.node} | {f.domain for f in graph.functions}
    assert domains <= {"", "ai.onnx", "pkg.onnxscript.torch_lib.common"}, domains
    assert graph.opset_import[0].version >= 18


def test_torch_export_round_trip(tmp_path):
    model = trained_like(TinyNet())
    swap_activations(model)
    trained_like(model)
    x = torch.randn(5, 3, 8, 8)
    program = torch.export.export(model, (x,))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2")
    torch.testing.assert_close(loaded.module()(x), model(x))
    assert "caer_lightning" not in str(program.graph), "the exported graph is plain ATen ops"


@pytest.mark.filterwarnings("ignore:`LightningModule.to_torchscript` has been deprecated")
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
def test_torch_jit_trace_round_trip(tmp_path):
    """TorchScript is deprecated upstream, and still how many models are deployed: the swap must survive it."""
    model = trained_like(TinyNet())
    swap_activations(model)
    trained_like(model)
    x = torch.randn(5, 3, 8, 8)
    traced = model.to_torchscript(method="trace", example_inputs=x)  # Lightning's torch.jit.trace
    traced.save(str(tmp_path / "m.ts"))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.ts"))(x), model(x))
    plain = torch.jit.trace(model.net, (x,))
    torch.testing.assert_close(plain(x), model(x))


@pytest.mark.slow
def test_from_a_checkpoint_to_onnx(tmp_path):
    """README's path: load_checkpoint, then torch.onnx.export."""
    model = TinyNet()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer(callbacks=[CAReLUCallback(lr_scale=1.0), checkpoints], max_steps=3, enable_checkpointing=True).fit(
        model, loader()
    )
    loaded = load_checkpoint(TinyNet, tmp_path / "last.ckpt").eval()
    for size, (onnx, torch_out) in onnx_outputs(loaded, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx").items():
        torch.testing.assert_close(onnx, torch_out, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch_out, model.eval()(torch.randn(size, 3, 8, 8, generator=torch.Generator().manual_seed(size))))


def test_onnx_legacy_torchscript_exporter_matches_pytorch(tmp_path):
    # torch.onnx.export(dynamo=False) is seen through torch.onnx.is_in_onnx_export(), not torch.compiler's flag
    model = trained_like(nn.Sequential(nn.Linear(4, 4), CAReLU(reduction="token")))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter and what it calls are deprecated
        torch.onnx.export(model, (x,), str(tmp_path / "legacy.onnx"), dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "legacy.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(onnx_out, model(x), rtol=1e-4, atol=1e-5)
