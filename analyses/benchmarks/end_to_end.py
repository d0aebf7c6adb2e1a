"""The new user's end-to-end workload, today's defaults against the new ones, in one run.

Workload (issue 26, reduced by the options): ``--tiles`` synthetic Cell Painting tiles of
``--size`` px with a phenotype planted in one channel, a ResNet-18-like plain-torch classifier
(``--resnet-width`` sets the first stage's width; 18 = 2-2-2-2 basic blocks), then

1. the learned generator (counterfactuals),
2. four attribution methods: ``ig``, ``saliency``, ``d_ig``, ``d_ixg``,
3. single-channel DAC of ``d_ig``,
4. exact channel Shapley values (counterfactual baseline).

``today``: one torch thread, the generator's old defaults (``--old-steps`` fixed steps, batch 8,
widths [8, 16, 32], cycle and diversity losses, no sparsity, no checks), 50 integration steps.
``new``: every available core, the device profile with the stopping rule and the data-chosen
sparsity, ``n_steps="auto"`` (Gauss-Legendre, completeness within 1 %).

Prints seconds per phase and in total, the speedup (today / new), the channel each run names
(largest mean single-channel DAC of ``d_ig``, and largest mean Shapley value), the DAC of the
planted channel and the generator's change share there. Example::

    python analyses/benchmarks/end_to_end.py --tiles 96 --size 48 --old-steps 400
    python analyses/benchmarks/end_to_end.py --tiles 258 --size 64 --old-steps 400   # the full workload
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

PHENOTYPE_CHANNEL = {"nuclear_size": "DNA", "er_intensity": "ER", "rna_nucleoli": "RNA",
                     "agp_intensity": "AGP", "mito_fragmentation": "Mito"}


class BasicBlock(nn.Module):
    def __init__(self, in_width: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential() if stride == 1 and in_width == width else nn.Sequential(
            nn.Conv2d(in_width, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet18Like(nn.Module):
    """ResNet-18 layout (stem, 4 stages of 2 basic blocks, global pooling, linear), any channel count."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16):
        super().__init__()
        self.in_channels = in_channels
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, prev = [], width
        for i, w in enumerate(widths):
            blocks += [BasicBlock(prev, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, n_classes)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def workload(data, model, *, today: bool, args, device) -> dict:
    from chanstat.attribution import attribute
    from chanstat.attribution.gradients import recording_integration, summarise_integration
    from chanstat.counterfactual import generate_counterfactuals
    from chanstat.dacscore import dac
    from chanstat.decompose import channel_shapley
    from chanstat.runtime import use_available_cores

    threads = use_available_cores(1 if today else args.threads)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if today:
        options = dict(steps=args.old_steps, train_batch_size=8, sparsity=0.0, held_out=0.0,
                       architecture=dict(widths=[8, 16, 32], style_dim=8, latent_dim=8, n_bottleneck=2, mapping_width=64),
                       loss=dict(diversity=0.5, cycle=1.0, identity=2.0), check_every=10**9)
    else:
        options = dict(time_budget=args.time_budget)
    result = generate_counterfactuals(data, "generator", model=model, device=device, seed=0, n_latent=10,
                                      n_reference=10, **options)
    times["generator"] = time.perf_counter() - t0
    x, y = data.images, data.labels
    xc, yc = result.counterfactuals, result.counterfactual_target
    steps = {"n_steps": 50} if today else {}
    maps = {}
    t0 = time.perf_counter()
    with recording_integration() as records:
        for method in ("ig", "saliency", "d_ig", "d_ixg"):
            maps[method] = attribute(model, x, y, method, counterfactuals=xc, counterfactual_target=yc, batch_size=64,
                                     **(steps if method in ("ig", "d_ig") else {}))
    times["attribution"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = dac(model, x, y, maps["d_ig"], counterfactuals=xc, counterfactual_target=yc, channels=data.channels,
                 strategy="single_channel", schedule="value" if today else "adaptive", steps=50).scores
    times["dac"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shapley = channel_shapley(model, x, y, counterfactuals=xc, channels=data.channels, device=device).values
    times["shapley"] = time.perf_counter() - t0
    by_channel = scores.groupby("channel")["dac"].mean()
    phi = shapley.groupby("channel")["shapley"].mean()
    share = result.summary.set_index("channel")["change_share"]
    return {"rule": "today" if today else "new", "threads": threads, "seconds": times, "total": sum(times.values()),
            "dac_channel": str(by_channel.idxmax()), "dac_planted": float(by_channel[args.channel]),
            "shapley_channel": str(phi.idxmax()), "flip_rate": float(result.summary["flip_rate"].iloc[0]),
            "change_share_planted": float(share[args.channel]), "integration": summarise_integration(records),
            "generator_quality": result.info.get("generator_quality", {})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=96)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--phenotype", default="rna_nucleoli")
    parser.add_argument("--resnet-width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--old-steps", type=int, default=400, help="fixed generator steps of today's run")
    parser.add_argument("--time-budget", type=float, default=None, help="generator training seconds at most (new)")
    parser.add_argument("--threads", type=int, default=None, help="threads of the new run (default: available cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=("today", "new"), default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from chanstat.data import synthetic
    from chanstat.models import train
    from chanstat.runtime import resolve_device, use_available_cores

    use_available_cores(args.threads)
    device = resolve_device(args.device)
    args.channel = PHENOTYPE_CHANNEL[args.phenotype]
    sites = max(1, -(-args.tiles // 16))
    data = synthetic(n_plates=2, wells_per_class=4, sites_per_well=sites, size=args.size, phenotype=args.phenotype, seed=0)
    data = data.subset(list(range(min(args.tiles, len(data)))))
    torch.manual_seed(0)
    model = ResNet18Like(len(data.channels), len(data.classes), width=args.resnet_width)
    t0 = time.perf_counter()
    fit = train(model, data, epochs=args.epochs, batch_size=16, lr=2e-3, patience=args.epochs, min_epochs=5, seed=0,
                device=device, progress=False)
    model = model.eval().to(device)
    print(f"device {device}; {len(data)} tiles {tuple(data.images.shape[1:])}, planted {args.channel}; ResNet-18-like "
          f"classifier val accuracy {fit.val_accuracy:.3f} ({time.perf_counter() - t0:.0f} s, not counted)")
    rows = []
    for today in (True, False):
        if args.only and args.only != ("today" if today else "new"):
            continue
        row = workload(data, model, today=today, args=args, device=device)
        rows.append(row)
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in row["seconds"].items())
        print(f"{row['rule']:5s} ({row['threads']} threads): {phases}; total {row['total']:.1f} s; names "
              f"{row['dac_channel']} (DAC) / {row['shapley_channel']} (Shapley); {args.channel} DAC {row['dac_planted']:.3f}; "
              f"flip {row['flip_rate']:.3f}; change share {args.channel} {row['change_share_planted']:.3f}")
        for method, s in row["integration"].items():
            print(f"      {method}: steps mean {s['mean_steps']}, max error {s['max_error']:.2e}")
    if len(rows) == 2:
        old, new = rows
        print(f"speedup today / new: total x{old['total'] / new['total']:.2f}; " + ", ".join(
            f"{k} x{old['seconds'][k] / max(new['seconds'][k], 1e-9):.2f}" for k in old["seconds"]))
        print(f"same named channel: {old['dac_channel'] == new['dac_channel']}; "
              f"|DAC difference| in {args.channel}: {abs(old['dac_planted'] - new['dac_planted']):.3f} (target <= 0.05)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
