"""What the callback checks on logged steps: layers whose tanh saturated (a warning), and α or β that are no
longer finite (an error, raised before a checkpoint holding them can be written)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from caer_lightning.dashboard import PARAMETER_COLUMNS

# Mean |α·p + β| above this: tanh' = 1 − tanh² < 1% (at 3.0 it is 0.0099), so the scale is stuck near ±K and
# α, β barely receive gradient any more.
SATURATION_LIMIT = 3.0
REMEDY = (
    "lower the learning rate of the 'carelu' optimizer group (CAReLUCallback(lr_scale=...) or lr=...; "
    "LearningRateMonitor shows it as lr-<optimizer>/carelu), or leave these layers out (exclude=...)"
)


class NonFiniteCAReLUError(RuntimeError):
    """α or β of a CAReLU layer became NaN or infinite during training."""


def saturated_layers(names: Sequence[str], saturation: Sequence[float]) -> dict[str, float]:
    """The layers whose mean |α·p + β| is above SATURATION_LIMIT, with that value."""
    return {name: value for name, value in zip(names, saturation) if value > SATURATION_LIMIT}


def saturation_message(layers: dict[str, float], scales: dict[str, float], step: int) -> str:
    described = ", ".join(f"{name} (mean |α·p+β| = {layers[name]:.2f}, scale {scales[name]:+.2f})" for name in layers)
    return (
        f"CAReLUCallback: {len(layers)} layer(s) saturated by training step {step}: {described}. Their "
        f"tanh' is below 1% (mean |α·p+β| > {SATURATION_LIMIT:g}), so the scale is stuck near ±K and their alpha "
        f"and beta no longer learn. If that is not what you want, {REMEDY}."
    )


def check_finite(names: Sequence[str], parameters: Tensor, step: int, when: str) -> None:
    """Raise NonFiniteCAReLUError naming the layers whose α or β holds a non-finite value (any channel of
    per-channel ones): `parameters` is `dashboard.parameters`'s table, on the CPU."""
    columns = {name: index for index, name in enumerate(PARAMETER_COLUMNS)}
    bad = {name: (row[columns["alpha"]], row[columns["beta"]]) for name, row in zip(names, parameters.tolist())
           if not row[columns["finite"]]}
    if not bad:
        return
    described = ", ".join(f"{name} (alpha={a:.4g}, beta={b:.4g})" for name, (a, b) in bad.items())
    raise NonFiniteCAReLUError(
        f"CAReLUCallback: alpha/beta became non-finite by training step {step} ({when}) in {described}. The run "
        "was stopped before a checkpoint with these values could be written; checkpoints saved earlier are "
        f"intact. To resume from one of them, {REMEDY}. (Per-channel layers show their means over the channels.)"
    )
