"""Small single-image super-resolution networks with nn.ReLU activations (what CAReLUCallback swaps):

- ESPCN (Shi et al., 2016): 5×5 conv (64) → 3×3 conv (32) → 3×3 conv (C·r²) → pixel shuffle. The paper used
  tanh; the ReLU version here is the one most reimplementations train.
- FSRCNN (Dong et al., 2016): 5×5 feature extraction (d), 1×1 shrinking (s), m 3×3 mapping layers, 1×1
  expanding (d), 9×9 transposed conv with stride r. The paper used PReLU; here ReLU (a PReLU holds a parameter
  and is no swap target).

Both work on the image's channels (RGB by default) at the LR resolution and upscale only at the end.
"""

from __future__ import annotations

from torch import Tensor, nn

NETS = ("espcn", "fsrcnn")


class ESPCN(nn.Module):
    """ESPCN with ReLU: `features` and `mid` channels in the two hidden layers, sub-pixel upscaling by `scale`."""

    def __init__(self, scale: int, channels: int = 3, features: int = 64, mid: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, features, 5, padding=2), nn.ReLU(),
            nn.Conv2d(features, mid, 3, padding=1), nn.ReLU(),
            nn.Conv2d(mid, channels * scale**2, 3, padding=1),
        )
        self.upscale = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.upscale(self.body(x))


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m) with ReLU in place of the paper's PReLU; defaults d=56, s=12, m=4 as published."""

    def __init__(self, scale: int, channels: int = 3, d: int = 56, s: int = 12, m: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, d, 5, padding=2), nn.ReLU(), nn.Conv2d(d, s, 1), nn.ReLU()]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(s, d, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.upscale = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.upscale(self.body(x))


def build_net(net: str, scale: int, channels: int, **kwargs: int) -> nn.Module:
    """The network called `net` ("espcn" or "fsrcnn") for `scale`; `kwargs` set its widths."""
    if net not in NETS:
        raise ValueError(f"net={net!r} is not supported; accepted values: {', '.join(NETS)}")
    return (ESPCN if net == "espcn" else FSRCNN)(scale, channels, **kwargs)
