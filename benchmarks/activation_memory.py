"""Activation memory: the bytes autograd keeps for backward with CAReLU against ReLU, in one process.

    python benchmarks/activation_memory.py                  # ResNet-18 (CIFAR stem), ViT-Tiny (tokens), DenseNet-121
    python benchmarks/activation_memory.py --models resnet18 --json memory.json

For each model and dtype (float32, and bfloat16 under autocast as `precision="bf16-mixed"` runs it), one forward
of a training batch, then every tensor its autograd graph keeps for backward, read from the graph's nodes; the
distinct storages are summed (a tensor kept by two layers, such as an activation's output that the next
convolution keeps too, counts once). Memory is counted, not timed, so the figures hold on any device. Arms:

- ReLU: the model's activations as nn.ReLU (the baseline; the ViT's GELUs are replaced by ReLU for it),
- the model's own activation, where it is not ReLU (GELU for the ViT),
- CAReLU, as shipped: its input rebuilt in backward where the BatchNorm, residual sum or activation before it
  keeps what that takes (`caer_lightning/ops/recompute.py`),
- CAReLU keeping its input (CAER_RECOMPUTE=0, caer_lightning before this change).

Then the CPU time of a training step (forward, backward, SGD step) of each arm against ReLU's, medians over
--iters steps taken round-robin (float32 only: bfloat16 autocast on CPU says little about a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import timm
import torch
import torch.nn.functional as F
from torch import nn

from caer_lightning import CAReLU, _compat, swap_activations
from caer_lightning.models.timm_classifier import apply_cifar_stem
from caer_lightning.ops.recompute import ENVIRONMENT_VARIABLE

# name: (timm model, keyword arguments, CIFAR stem, the model's own activation class, CAReLU reduction)
MODELS = {
    "resnet18": ("resnet18", {}, True, nn.ReLU, "sample"),
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, False, nn.GELU, "token"),
    "densenet121": ("densenet121", {}, False, nn.ReLU, "sample"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build(name: str, arm: str) -> nn.Module:
    """The model of `name` with the activations of `arm`: "relu", "own", "carelu" or "carelu, input kept"."""
    backbone, kwargs, cifar_stem, own, reduction = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(backbone, num_classes=100, **kwargs)
    if cifar_stem:
        apply_cifar_stem(model, backbone)
    if arm == "relu" and own is not nn.ReLU:
        swap_activations(model, targets=(own,), factory=lambda old: nn.ReLU())
    elif arm.startswith("carelu"):
        swap_activations(model, targets=(own,), factory=lambda old: CAReLU(reduction=reduction))
    return model.train()


@contextlib.contextmanager
def recompute(on: bool) -> Iterator[None]:
    """CAReLU rebuilding its input in backward (the default) or keeping it (CAER_RECOMPUTE=0)."""
    before = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENVIRONMENT_VARIABLE]
        else:
            os.environ[ENVIRONMENT_VARIABLE] = before


def saved_storages(output: torch.Tensor) -> dict[int, int]:
    """{storage address: bytes} of the distinct storages the autograd graph behind `output` keeps for backward
    (read from the graph's nodes: saved-tensor hooks would change what CAReLU keeps)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _compat.kept_for_backward(output)}


def saved_bytes(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward of `model` on `x`."""
    with autocast(x.device, dtype):
        return sum(saved_storages(model(x)).values())


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def training_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def arms(name: str) -> list[str]:
    own = [] if MODELS[name][3] is nn.ReLU else ["own"]
    return ["relu", *own, "carelu", "carelu, input kept"]


def label(name: str, arm: str) -> str:
    own = MODELS[name][3].__name__
    return {"relu": "ReLU (baseline)", "own": own, "carelu": "CAReLU",
            "carelu, input kept": "CAReLU, input kept (CAER_RECOMPUTE=0)"}[arm]


def step_times(name: str, x: torch.Tensor, warmup: int, iters: int) -> dict[str, float]:
    """Median seconds of a float32 training step per arm, the arms taken round-robin."""
    labels = torch.randint(0, 100, (x.shape[0],))
    steps = {arm: training_step(build(name, arm), x, labels) for arm in arms(name)}
    times: dict[str, list[float]] = {arm: [] for arm in steps}
    for iteration in range(warmup + iters):
        for arm, step in steps.items():
            with recompute(arm == "carelu"):
                start = time.perf_counter()
                step()
                if iteration >= warmup:
                    times[arm].append(time.perf_counter() - start)
    return {arm: statistics.median(values) for arm, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=list(DTYPES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7, help="timed steps per arm (0: count memory only)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device("cpu")
    print(f"device: CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}")
    print(f"{'model':<12} {'dtype':<9} {'arm':<38} {'saved MiB':>10} {'ratio':>6} {'step ms':>8} {'ratio':>6}")
    rows = []
    for name in args.models:
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        times = step_times(name, x, args.warmup, args.iters) if args.iters else {}
        for dtype_name in args.dtypes:
            counted = {}
            for arm in arms(name):
                with recompute(arm == "carelu"):
                    counted[arm] = saved_bytes(build(name, arm), x, DTYPES[dtype_name])
            for arm in arms(name):
                row = {"model": name, "dtype": dtype_name, "arm": label(name, arm), "saved_bytes": counted[arm],
                       "saved_ratio": counted[arm] / counted["relu"]}
                timed = dtype_name == "float32" and arm in times
                if timed:
                    row.update(step_seconds=times[arm], step_ratio=times[arm] / times["relu"])
                rows.append(row)
                step = f"{row['step_seconds'] * 1e3:>8.1f} {row['step_ratio']:>6.3f}" if timed else ""
                print(f"{name:<12} {dtype_name:<9} {row['arm']:<38} {counted[arm] / 2**20:>10.1f} "
                      f"{row['saved_ratio']:>6.3f} {step}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": "cpu", "torch": torch.__version__, "batch_size": args.batch_size,
                       "image_size": args.image_size, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
