"""Swap the smallest model of every timm family and check that nothing it computes changes.

A family is a model name's prefix up to its first digit or underscore (`resnet18` -> resnet); its smallest model
by parameter count stands for it; families whose smallest model has more than --max-params are skipped. For each:

1. ReLU targets (the default): the eval outputs of the swapped model must equal the original's bitwise.
2. The model's activations (ReLU, GELU, SiLU, ... and timm's own classes; not gates such as Sigmoid): one
   training step must give every CAReLU that ran a finite gradient on alpha and beta.

Outcomes: `equal` (ReLU sites swapped, outputs bitwise equal, training step fine), `other` (no ReLU; its own
activations swapped, training step fine), `refused` (the swap stopped with a ValueError: the message is kept),
`failed` (anything else, including unequal outputs). Warnings of the swap (calls left as they are) are counted.

    python benchmarks/timm_sweep.py --out timm_sweep.jsonl            # the whole sweep (about an hour, 2 CPUs)
    python benchmarks/timm_sweep.py --families resnet dla vit         # some families
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import timm
import timm.layers.activations as timm_activations
import torch
from torch import nn

from caer_lightning import CAReLU, swap_activations

# Activations a CAReLU stands in for in the training-step check (gates such as Sigmoid, Tanh and HardSigmoid
# are left alone: they scale, they do not rectify).
ACTIVATIONS = tuple(
    cls for cls in (
        nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU,
        *(getattr(timm_activations, name, None) for name in ("GELU", "GELUTanh", "QuickGELU", "Swish", "Mish",
                                                              "HardSwish", "HardMish")),
    ) if cls is not None
)


def family(name: str) -> str:
    return re.split(r"[_\d]", name)[0]


def smallest_per_family(max_params: float) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
    """family -> (its smallest model, parameter count), and the families skipped with why."""
    counts: dict[str, list[tuple[int, str]]] = {}
    for name in timm.list_models():
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False)
            size = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device: counted when built
            size = -1
        counts.setdefault(family(name), []).append((size, name))
    chosen, skipped = {}, {}
    for fam, models in sorted(counts.items()):
        known = sorted(m for m in models if m[0] >= 0) or sorted(models)
        size, name = known[0]
        if size > max_params:
            skipped[fam] = f"{name}: {size / 1e6:.1f} M parameters"
        else:
            chosen[fam] = (name, size)
    return chosen, skipped


def input_for(model: nn.Module, image_size: int | None = None) -> torch.Tensor:
    channels, *size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    size = [image_size, image_size] if image_size else size
    return torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))


def check(name: str, image_size: int | None = None) -> dict:
    """Run both checks on one model (inputs of its default size, or `image_size` square); returns the record."""
    record: dict = {"model": name, "family": family(name)}
    started = time.perf_counter()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    record["params"] = sum(p.numel() for p in model.parameters())
    x = input_for(model, image_size)
    with torch.no_grad():
        expected = model(x)
    relu_model = copy.deepcopy(model)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = swap_activations(relu_model)
        record["relu_sites"] = len(names)
        record["warnings"] = [str(w.message) for w in caught if "swap_activations" in str(w.message)]
        with torch.no_grad():
            got = relu_model(x)
        record["equal"] = bool(torch.equal(got, expected))
        if not record["equal"]:
            record["max_difference"] = float((got - expected).abs().max())
    except ValueError as error:
        if "matched no module" not in str(error):
            record.update(outcome="refused", message=str(error))
            return record
        record["relu_sites"] = 0
    del relu_model

    trained = model
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = swap_activations(trained, ACTIVATIONS)
        record["warnings"] = sorted({*record.get("warnings", []),
                                     *(str(w.message) for w in caught if "swap_activations" in str(w.message))})
    except ValueError as error:
        record.update(outcome="refused", message=str(error))
        return record
    record["sites"] = len(names)
    calls = Counter()
    hooks = [trained.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: calls.update([n])) for n in names]
    trained.train()
    output = trained(x)
    output = output[0] if isinstance(output, (tuple, list)) else output
    output.float().square().mean().backward()
    for hook in hooks:
        hook.remove()
    ran = [n for n in names if calls[n]]
    bad = [n for n in ran if not _finite_gradients(trained.get_submodule(n))]
    record.update(ran=len(ran), not_ran=[n for n in names if not calls[n]], bad_gradients=bad)
    if bad or not ran or record.get("equal") is False:
        record["outcome"] = "failed"
    else:
        record["outcome"] = "equal" if record["relu_sites"] else "other"
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _finite_gradients(module: nn.Module) -> bool:
    if not isinstance(module, CAReLU):
        return False
    grads = (module.alpha.grad, module.beta.grad)
    return all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", help="only these families (default: every family)")
    parser.add_argument("--max-params", type=float, default=30e6, help="skip families whose smallest model is larger")
    parser.add_argument("--out", type=Path, default=None, help="write one JSON record per model here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen, skipped = smallest_per_family(args.max_params)
    if args.families:
        chosen = {f: chosen[f] for f in args.families if f in chosen}
    records = []
    out = args.out.open("w") if args.out else None
    for fam, (name, _) in chosen.items():
        try:
            record = check(name)
        except Exception as error:  # noqa: BLE001 - every failure is a result of the sweep
            record = {"model": name, "family": fam, "outcome": "failed",
                      "message": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=-4)}
        records.append(record)
        line = json.dumps(record)
        print(f"{record['outcome']:8s} {name:40s} relu={record.get('relu_sites', '-')} sites={record.get('sites', '-')} "
              f"ran={record.get('ran', '-')} warnings={len(record.get('warnings', []))} "
              f"{record.get('message', '')[:160]}", flush=True)
        if out:
            out.write(line + "\n")
            out.flush()
    outcomes = Counter(r["outcome"] for r in records)
    if not args.families:
        print(f"\n{len(chosen) + len(skipped)} families: {len(records)} swept, {len(skipped)} skipped (smallest "
              f"above {args.max_params / 1e6:g} M parameters: {', '.join(f'{k} ({v})' for k, v in skipped.items())})")
    print(", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    print(f"models with warnings (calls left as they are): {sum(bool(r.get('warnings')) for r in records)}")
    return 1 if outcomes.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
