"""Training-step time and peak memory of CAReLU implementations against ReLU, in one process.

    python benchmarks/step_time.py                       # CPU: float32; CUDA: bf16 autocast + channels_last
    python benchmarks/step_time.py --compile --json out.json

For timm ResNet-18 with the CIFAR stem (or --backbone), one training step = forward, backward and an SGD
step. Arms: ReLU (the baseline), CAReLU through autograd on eager ops (`reference`), CAReLU's custom op with
eager ops inside (`eager`), with Triton kernels (`triton`, CUDA), and with --compile the ReLU model and the
reference expression under torch.compile. Then the op alone (forward + backward of one activation) against
ReLU and against the memory-traffic bound (8 passes over the tensor; ReLU needs 5), with the bandwidth
measured by a device copy in the same process. Prints median times, peak memory and ratios to ReLU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from caer_lightning import CAReLU, swap_activations
from caer_lightning.models.timm_classifier import apply_cifar_stem


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[float, int | None]:
    """Median seconds per call and peak allocated bytes (CUDA only) over `iters` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak


def build_model(args, activation: str, impl: str | None, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(args.backbone, num_classes=100)
    if args.cifar_stem:
        apply_cifar_stem(model, args.backbone)
    if activation == "carelu":
        swap_activations(model)
        for module in model.modules():
            if isinstance(module, CAReLU):
                module.impl = impl
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


def training_step(model: nn.Module, args, device: torch.device) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (args.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=args.dtype, enabled=args.dtype != torch.float32):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_arms(device: torch.device, compile_: bool) -> list[tuple[str, str, str | None, bool]]:
    """(label, activation, impl, compiled)."""
    arms = [("ReLU, eager (baseline)", "relu", None, False), ("CAReLU reference: autograd through eager ops",
            "carelu", "reference", False), ("CAReLU custom op, eager inside", "carelu", "eager", False)]
    if device.type == "cuda":
        arms.append(("CAReLU custom op, Triton kernels", "carelu", "triton", False))
    if compile_:
        arms += [("ReLU under torch.compile", "relu", None, True),
                 ("CAReLU reference under torch.compile", "carelu", "reference", True)]
    return arms


def op_level(args, device: torch.device) -> list[dict]:
    """Forward + backward of one activation on the first feature map of the network, against ReLU."""
    shape = (args.batch_size, 64, args.image_size, args.image_size)
    z = torch.randn(shape, device=device, dtype=args.dtype)
    if args.channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    z.requires_grad_()
    grad = torch.randn_like(z)
    bytes_per_pass = z.numel() * z.element_size()
    copy_source = torch.empty(bytes_per_pass, dtype=torch.uint8, device=device)
    copy_time, _ = measure(lambda: copy_source.clone(), device, args.warmup, args.iters)
    bandwidth = 2 * bytes_per_pass / copy_time  # a copy reads and writes the tensor once: 2 passes
    rows = []
    for label, make in [("ReLU", lambda: nn.ReLU()), *[(f"CAReLU {impl}", lambda impl=impl: _with_impl(impl))
                                                       for impl in _op_impls(device)]]:
        act = make().to(device)
        seconds, _ = measure(lambda: act(z).backward(grad), device, args.warmup, args.iters)
        passes = 5 if label == "ReLU" else 8
        rows.append({"op": label, "seconds": seconds, "bound_seconds": passes * bytes_per_pass / bandwidth})
    baseline = rows[0]["seconds"]
    for row in rows:
        row["ratio_to_relu"] = row["seconds"] / baseline
        row["ratio_to_bound"] = row["seconds"] / row["bound_seconds"]
    return rows


def _op_impls(device: torch.device) -> list[str]:
    return ["reference", "eager"] + (["triton"] if device.type == "cuda" else [])


def _with_impl(impl: str) -> CAReLU:
    act = CAReLU()
    act.impl = impl
    return act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--no-cifar-stem", dest="cifar_stem", action="store_false")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on CUDA, 2 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="default: 30 on CUDA, 5 on CPU")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile arms")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.warmup = args.warmup or (10 if cuda else 2)
    args.iters = args.iters or (30 if cuda else 5)
    args.dtype = torch.bfloat16 if cuda else torch.float32
    args.channels_last = cuda

    results = {"device": device_name(device), "backbone": args.backbone, "cifar_stem": args.cifar_stem,
               "batch_size": args.batch_size, "image_size": args.image_size, "dtype": str(args.dtype),
               "channels_last": args.channels_last, "steps": [], "op": []}
    # Build every arm first (measuring its own memory: peak during its warm-up steps minus what was allocated
    # before it was built), then time them round-robin so that machine drift hits every arm alike.
    steps, peaks = {}, {}
    for label, activation, impl, compiled in model_arms(device, args.compile):
        before = torch.cuda.memory_allocated(device) if cuda else 0
        model = build_model(args, activation, impl, device)
        steps[label] = training_step(torch.compile(model) if compiled else model, args, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            steps[label]()
        synchronize(device)
        peaks[label] = torch.cuda.max_memory_allocated(device) - before if cuda else None
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.iters):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            times[label].append(time.perf_counter() - start)
    for label in steps:
        results["steps"].append({"arm": label, "seconds": statistics.median(times[label]), "peak_bytes": peaks[label]})
    base = results["steps"][0]
    for row in results["steps"]:
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["memory_ratio"] = row["peak_bytes"] / base["peak_bytes"] if row["peak_bytes"] else None
    results["op"] = op_level(args, device)

    stem = "CIFAR stem" if args.cifar_stem else "ImageNet stem"
    print(f"device: {results['device']}; {args.backbone} ({stem}), batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, {results['dtype']}{', channels_last' if args.channels_last else ''}")
    print(f"{'training step':<48} {'median ms':>10} {'ratio':>7} {'peak MiB':>9} {'ratio':>7}")
    for row in results["steps"]:
        memory = (f"{row['peak_bytes'] / 2**20:>9.0f} {row['memory_ratio']:>7.2f}" if row["peak_bytes"]
                  else f"{'n/a':>9} {'':>7}")
        print(f"{row['arm']:<48} {row['seconds'] * 1e3:>10.2f} {row['time_ratio']:>7.2f} {memory}")
    print(f"\n{'op: forward + backward':<48} {'median ms':>10} {'/ReLU':>7} {'/bound':>7}")
    for row in results["op"]:
        print(f"{row['op']:<48} {row['seconds'] * 1e3:>10.3f} {row['ratio_to_relu']:>7.2f} {row['ratio_to_bound']:>7.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
