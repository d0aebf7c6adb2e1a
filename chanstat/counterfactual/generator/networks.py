"""StarGAN-v2-style conversion network for any channel count and image size.

Four parts, reimplemented from the StarGAN v2 paper's description (Choi et al., CVPR 2020):

- *generator* ``G(x, s)``: a convolutional encoder (residual blocks with instance
  normalisation, each halving H and W), a bottleneck, and a decoder whose residual blocks
  take the style code ``s`` through adaptive instance normalisation (AdaIN: the style sets
  the per-feature scale and shift after normalisation);
- *mapping network* ``M(z, y)``: a shared MLP on a random latent ``z`` with one output head
  per class, giving a style code of class ``y``;
- *style encoder* ``E(x, y)``: a convolutional trunk with one linear head per class, giving
  the style code of a reference image ``x`` for class ``y``;
- *discriminator* ``D(x, y)``: the same kind of trunk with one real/fake logit per class.

Two choices differ from the paper, both for counterfactuals rather than image synthesis: the
generator predicts a *residual* (``x' = x + std * G(x, s)``, the last layer starts at zero, so
an untrained generator returns the real image and training starts from "no change"), and
it works on per-channel standardised images (mean and standard deviation stored in the
network), so channels of different brightness are changed on the same footing. Images whose
height or width is not a multiple of ``2 ** len(widths)`` are padded (edge values) and
cropped back.

A third addition makes the conversion channel-sparse: a per-(target class, channel) gate
``g[t, c]`` in {0, 1} (buffer ``channel_gate``, all open at first) multiplies the residual,
``x' = x + g[t] * std * G(x, s)``, so a closed channel is never changed for that target. Training
closes the gates of channels the conversion does not need
(:func:`~chanstat.counterfactual.generator.gates.prune_gates`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chanstat.tensors import device_of

GENERATOR_FORMAT = "chanstat-generator-v1"


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ResidualBlock(nn.Module):
    """Pre-activation residual block, optionally instance-normalised and downsampling by 2."""

    def __init__(self, in_width: int, out_width: int, normalise: bool, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.norm1 = nn.InstanceNorm2d(in_width, affine=True) if normalise else nn.Identity()
        self.conv1 = nn.Conv2d(in_width, in_width, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(in_width, affine=True) if normalise else nn.Identity()
        self.conv2 = nn.Conv2d(in_width, out_width, 3, padding=1)
        self.shortcut = nn.Conv2d(in_width, out_width, 1, bias=False) if in_width != out_width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv1(_act(self.norm1(x)))
        if self.downsample:
            r = F.avg_pool2d(r, 2)
            x = F.avg_pool2d(x, 2)
        r = self.conv2(_act(self.norm2(r)))
        # dividing by sqrt(2) keeps the variance of the sum close to that of its parts
        return (self.shortcut(x) + r) / math.sqrt(2)


class AdaIN(nn.Module):
    """Instance normalisation whose scale and shift come from a style code."""

    def __init__(self, style_dim: int, width: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(width, affine=False)
        self.affine = nn.Linear(style_dim, 2 * width)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style).chunk(2, dim=1)
        return (1 + gamma[:, :, None, None]) * self.norm(x) + beta[:, :, None, None]


class StyledBlock(nn.Module):
    """Residual block with AdaIN style injection, optionally upsampling by 2 (nearest)."""

    def __init__(self, in_width: int, out_width: int, style_dim: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.norm1 = AdaIN(style_dim, in_width)
        self.conv1 = nn.Conv2d(in_width, out_width, 3, padding=1)
        self.norm2 = AdaIN(style_dim, out_width)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, padding=1)
        self.shortcut = nn.Conv2d(in_width, out_width, 1, bias=False) if in_width != out_width else nn.Identity()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        r = _act(self.norm1(x, style))
        if self.upsample:
            r = F.interpolate(r, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        r = self.conv2(_act(self.norm2(self.conv1(r), style)))
        return (self.shortcut(x) + r) / math.sqrt(2)


class Generator(nn.Module):
    """``G(x, s)``: standardised image (N, C, H, W) and style (N, S) -> residual (N, C, H, W)."""

    def __init__(self, in_channels: int, widths: Sequence[int], style_dim: int, n_bottleneck: int):
        super().__init__()
        widths = list(widths)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        encoder, prev = [], widths[0]
        for width in widths:
            encoder.append(ResidualBlock(prev, width, normalise=True, downsample=True))
            prev = width
        encoder += [ResidualBlock(prev, prev, normalise=True, downsample=False) for _ in range(n_bottleneck)]
        self.encoder = nn.ModuleList(encoder)
        decoder = [StyledBlock(prev, prev, style_dim, upsample=False) for _ in range(n_bottleneck)]
        for width in reversed([widths[0]] + widths[:-1]):
            decoder.append(StyledBlock(prev, width, style_dim, upsample=True))
            prev = width
        self.decoder = nn.ModuleList(decoder)
        self.out_norm = nn.InstanceNorm2d(prev, affine=True)
        self.out = nn.Conv2d(prev, in_channels, 1)
        nn.init.zeros_(self.out.weight)  # untrained generator = identity (no change)
        assert self.out.bias is not None  # Conv2d has a bias by default
        nn.init.zeros_(self.out.bias)
        self.multiple = 2 ** len(widths)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        feats = self.stem(x)
        for block in self.encoder:
            feats = block(feats)
        for block in self.decoder:
            feats = block(feats, style)
        out = self.out(_act(self.out_norm(feats)))
        return out[..., :h, :w]


class MappingNetwork(nn.Module):
    """``M(z, y)``: latent (N, L) and class (N,) -> style (N, S); shared MLP, one head per class."""

    def __init__(self, latent_dim: int, style_dim: int, n_classes: int, width: int, n_shared: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        prev = latent_dim
        for _ in range(n_shared):
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, style_dim)) for _ in range(n_classes)
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        styles = torch.stack([head(h) for head in self.heads], dim=1)  # (N, K, S)
        return styles[torch.arange(z.shape[0], device=z.device), y]


class ClassTrunk(nn.Module):
    """Conv trunk (downsampling residual blocks, global pooling) with ``out_dim`` outputs per class.

    The style encoder (``out_dim`` = style size) and the discriminator (``out_dim`` = 1) share it.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], n_classes: int, out_dim: int):
        super().__init__()
        widths = list(widths)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks, prev = [], widths[0]
        for width in widths:
            blocks.append(ResidualBlock(prev, width, normalise=False, downsample=True))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, n_classes * out_dim)
        self.n_classes, self.out_dim = n_classes, out_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = _act(self.blocks(self.stem(x))).mean(dim=(2, 3))
        out = self.head(h).view(x.shape[0], self.n_classes, self.out_dim)
        out = out[torch.arange(x.shape[0], device=x.device), y]
        return out.squeeze(1) if self.out_dim == 1 else out


class ConversionNetwork(nn.Module):
    """Generator, mapping network, style encoder and discriminator of one conversion model.

    Parameters
    ----------
    in_channels : number of stains C.
    n_classes : number of classes K.
    widths : feature widths of the generator encoder (each level halves H and W); the decoder
        mirrors them. The style encoder and discriminator use ``widths`` too.
    style_dim : size S of a style code.
    latent_dim : size L of the mapping network's random latent.
    n_bottleneck : residual blocks in the generator's bottleneck (plain and styled each).
    mapping_width : hidden width of the mapping network.
    channels, classes : names, kept with the weights (checked when the network is reused).

    Images pass through :meth:`translate`, which standardises them per channel (statistics set
    by :meth:`set_data_statistics`), adds the generator's residual and clamps to the data range.
    """

    # buffers (register_buffer in __init__); declared so their type is Tensor, not Tensor | Module
    input_mean: torch.Tensor
    input_std: torch.Tensor
    data_range: torch.Tensor
    channel_gate: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        widths: Sequence[int] = (16, 32),
        style_dim: int = 16,
        latent_dim: int = 8,
        n_bottleneck: int = 2,
        mapping_width: int = 64,
        channels: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
    ):
        super().__init__()
        if in_channels < 1 or n_classes < 2:
            raise ValueError(f"need in_channels >= 1 and n_classes >= 2; got {in_channels}, {n_classes}")
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints; got {list(widths)}")
        self.config: dict[str, Any] = dict(
            in_channels=int(in_channels),
            n_classes=int(n_classes),
            widths=[int(w) for w in widths],
            style_dim=int(style_dim),
            latent_dim=int(latent_dim),
            n_bottleneck=int(n_bottleneck),
            mapping_width=int(mapping_width),
            channels=None if channels is None else [str(c) for c in channels],
            classes=None if classes is None else [str(k) for k in classes],
        )
        self.generator = Generator(in_channels, widths, style_dim, n_bottleneck)
        self.mapping = MappingNetwork(latent_dim, style_dim, n_classes, mapping_width)
        self.style_encoder = ClassTrunk(in_channels, widths, n_classes, style_dim)
        self.discriminator = ClassTrunk(in_channels, widths, n_classes, 1)
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))
        self.register_buffer("data_range", torch.tensor([-math.inf, math.inf]))
        self.register_buffer("channel_gate", torch.ones(n_classes, in_channels))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        # networks saved before the gates existed load with every gate open
        key = prefix + "channel_gate"
        if key not in state_dict:
            state_dict[key] = torch.ones_like(self.channel_gate)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)

    @property
    def latent_dim(self) -> int:
        return self.config["latent_dim"]

    @property
    def n_classes(self) -> int:
        return self.config["n_classes"]

    def set_data_statistics(self, images: torch.Tensor) -> None:
        """Per-channel mean / standard deviation and the min / max of ``images`` (N, C, H, W)."""
        images = images.float()
        c = self.config["in_channels"]
        self.input_mean.copy_(images.mean(dim=(0, 2, 3)).reshape(1, c, 1, 1))
        self.input_std.copy_(images.std(dim=(0, 2, 3)).clamp_min(1e-6).reshape(1, c, 1, 1))
        self.data_range.copy_(torch.stack([images.min(), images.max()]))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def style_from_latent(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Style codes (N, S) of classes ``y`` (N,) from latents ``z`` (N, L)."""
        return self.mapping(z, y)

    def style_from_reference(self, reference: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Style codes (N, S) of classes ``y`` from reference images (N, C, H, W) in data units."""
        return self.style_encoder(self.standardise(reference), y)

    def discriminate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Real/fake logit (N,) of images ``x`` (data units) for classes ``y``."""
        return self.discriminator(self.standardise(x), y)

    def residual(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The ungated change ``std * G(x, s)`` (N, C, H, W, data units) of images ``x`` toward ``style``."""
        return self.input_std * self.generator(self.standardise(x), style).to(x.dtype)

    def apply_change(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        target: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``clamp(x + g[target] * residual)`` with the gates ``gate`` (K, C; default :attr:`channel_gate`);
        ``target`` None: no gating."""
        if target is not None:
            gate = self.channel_gate if gate is None else gate
            residual = residual * gate[target].to(residual.dtype)[:, :, None, None]
        low, high = self.data_range[0], self.data_range[1]
        return torch.clamp(x + residual, low, high)

    def translate(self, x: torch.Tensor, style: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``x`` (N, C, H, W, data units) converted to the style ``style`` (N, S), same units.

        ``target`` (N,) is the class the style belongs to: its channel gates apply (closed
        channels stay unchanged). None applies no gate (every channel may change).
        """
        return self.apply_change(x, self.residual(x, style), target)

    def open_channels(self) -> dict[str, list[str]]:
        """Per target class (name), the channels (names) whose gate is open."""
        channels = self.config["channels"] or [str(c) for c in range(self.config["in_channels"])]
        classes = self.config["classes"] or [str(k) for k in range(self.n_classes)]
        gate = self.channel_gate.detach().cpu()
        return {str(k): [str(c) for c, g in zip(channels, gate[i].tolist()) if g > 0] for i, k in enumerate(classes)}

    def forward(self, x: torch.Tensor, style: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.translate(x, style, target)

    def save(self, path, **extra):
        """Write the network to ``path`` (:func:`save_generator`)."""
        return save_generator(self, path, **extra)


def save_generator(network: ConversionNetwork, path: str | os.PathLike, **extra: Any) -> Path:
    """Write a trained network (architecture, weights, channel and class names) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": GENERATOR_FORMAT,
        "arguments": network.config,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "extra": extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_generator(path: str | os.PathLike, device=None) -> ConversionNetwork:
    """Load a network written by :func:`save_generator` (eval mode, on ``device`` or the CPU)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"generator file not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != GENERATOR_FORMAT:
        raise ValueError(f"{path} is not a chanstat generator (written by save_generator)")
    network = ConversionNetwork(**blob["arguments"])
    network.load_state_dict(blob["state_dict"])
    return network.to(device_of(device) if device is not None else "cpu").eval()
