"""Generator quality per minute, with and without the channel-sparsity penalty.

For one data set with a phenotype planted in one channel (synthetic, or the real field with a
planted phenotype), trains a classifier once, then the conversion network once per
``--variants`` entry (``none``: sparsity 0, ``auto``: the data-chosen weight, or a number) with
the device's default profile and the stopping rule, and prints per variant:

- seconds (wall, and CPU seconds of the process: on one thread the wall time an idle machine
  would take) and the step the kept checkpoint comes from;
- held-out flip rate, concentration, realism gap of the kept checkpoint (the numbers the
  training wrote to provenance);
- on all images after candidate selection: flip rate, share of the change in the planted
  channel, and the per-pixel correlation of the change ``x' - x`` with the planted difference
  (oracle counterfactual minus image, all channels), mean over images;
- the channels each target class's gates left open (``auto`` / a number prune them);
- ``usable`` (held-out flip >= 0.9 and >= 0.8 of the change in the planted channel);
- the load average of the machine at the start and end of each variant (a shared machine makes
  the seconds longer);
- ratios against the first variant (the reference, measured in the same run).

Examples::

    python analyses/benchmarks/generator_quality.py --phenotype er_intensity
    python analyses/benchmarks/generator_quality.py --data real --channel Mito --time-budget 300
    python analyses/benchmarks/generator_quality.py --all-phenotypes --size 32 --n 128   # each channel
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def synthetic_set(phenotype: str, size: int, n: int, seed: int):
    from chanstat.data import synthetic

    sites = max(1, n // (2 * 2 * 4))
    return synthetic(n_plates=2, wells_per_class=4, sites_per_well=sites, size=size, phenotype=phenotype, seed=seed)


def real_set(channel: str, size: int, seed: int):
    from chanstat.data.readers import read_loaddata, tile
    from chanstat.data.semisynthetic import plant

    field = read_loaddata(
        ROOT / "analyses" / "real_field_loaddata.csv",
        channels=["DNA", "ER", "RNA", "AGP", "Mito"],
        objects={"cells": "CellsOutlines", "nuclei": "NucleiOutlines"},
    )
    tiles = tile(field, size, stride=size // 2, min_foreground=0.02, foreground_channel="DNA")
    return plant(
        tiles,
        channel=channel,
        kind="intensity",
        effect=1.0,
        cells="dna",
        dilation=12,
        min_cell_fraction=0.05,
        pseudo_wells=(3, 3),
        assign="tile",
        seed=seed,
    )


def classifier_for(data, seed: int, device, cache: str | None = None):
    """A VGG classifier trained on ``data`` (loaded from ``cache`` when that file exists)."""
    from chanstat.models import VGGClassifier, train

    torch.manual_seed(seed)
    size = data.images.shape[-1]
    model = VGGClassifier(len(data.channels), len(data.classes), widths=(8, 16, 32) if size <= 32 else (16, 32, 64))
    if cache and Path(cache).exists():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        model.load_state_dict(state["weights"])
        return model.to(device).eval(), float(state["val_accuracy"])
    fit = train(
        model,
        data,
        epochs=40,
        batch_size=8,
        lr=2e-3,
        patience=10,
        min_epochs=20,
        seed=seed,
        device=device,
        progress=False,
    )
    if cache:
        torch.save({"weights": model.state_dict(), "val_accuracy": float(fit.val_accuracy)}, cache)
    return model.eval(), float(fit.val_accuracy)


def agreement(data, result, channel: str) -> dict:
    """Flip rate, planted-channel share and correlation with the planted difference."""
    summary = result.summary.set_index("channel")
    change = (result.counterfactuals - data.images).flatten(1).double()
    truth = (data.counterfactuals - data.images).flatten(1).double()
    same = (result.counterfactual_target == data.counterfactual_target).numpy()
    change, truth = change[same], truth[same]
    c = change - change.mean(1, keepdim=True)
    t = truth - truth.mean(1, keepdim=True)
    corr = (c * t).sum(1) / (c.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    return {
        "flip_rate": float(summary["flip_rate"].iloc[0]),
        "planted_share": float(summary.loc[channel, "change_share"]),
        "correlation": float(corr[torch.isfinite(corr)].mean()),
        "shares": {k: round(float(v), 3) for k, v in summary["change_share"].items()},
    }


def run_variant(data, model, variant: str, args, device) -> dict:
    from chanstat.counterfactual import generate_counterfactuals

    sparsity = 0.0 if variant == "none" else ("auto" if variant == "auto" else float(variant))
    options = dict(
        sparsity=sparsity,
        seed=args.seed,
        device=device,
        n_latent=5,
        n_reference=5,
        progress=args.progress,
        time_budget=args.time_budget,
    )
    if args.steps:
        options["steps"] = args.steps
    if args.classifier_images is not None:
        options["classifier_images"] = args.classifier_images
    for name in ("patience", "min_steps"):  # the stopping rule (default: the device profile)
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    load_before = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = generate_counterfactuals(data, "generator", model=model, **options)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    quality = result.info.get("generator_quality", {})
    if args.log_dir:
        log = result.artifacts.get("generator_log")
        if log is not None:
            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            log.to_csv(Path(args.log_dir) / f"{args.channel}_{variant}_log.csv", index=False)
    row = {
        "variant": variant,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "training_seconds": result.info.get("training_seconds"),
        "steps": result.info.get("training_steps"),
        "best_step": quality.get("best_step"),
        "held_out_flip": quality.get("held_out_flip_rate"),
        "held_out_concentration": quality.get("held_out_concentration"),
        "realism_gap": quality.get("held_out_realism_gap"),
        "stop_reason": quality.get("stop_reason"),
        "sparsity_weight": quality.get("sparsity_weight"),
        "open_channels": quality.get("open_channels"),
        "threads": torch.get_num_threads(),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **agreement(data, result, args.channel),
    }
    row["usable"] = bool((row["held_out_flip"] or 0) >= 0.9 and row["planted_share"] >= 0.8)
    row["quality_per_minute"] = row["planted_share"] * row["flip_rate"] / (seconds / 60)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--phenotype", default="er_intensity", help="synthetic phenotype")
    parser.add_argument("--all-phenotypes", action="store_true", help="every synthetic phenotype (one per channel)")
    parser.add_argument("--channel", default=None, help="planted channel (real field; synthetic: from the phenotype)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=256, help="synthetic images")
    parser.add_argument("--variants", default="none,auto")
    parser.add_argument("--steps", type=int, default=None, help="maximum steps (default: the device profile)")
    parser.add_argument("--time-budget", type=float, default=300.0)
    parser.add_argument("--patience", type=int, default=None, help="checks without gain before stopping")
    parser.add_argument("--min-steps", type=int, default=None, help="no stop before this step")
    parser.add_argument(
        "--classifier-images", type=int, default=None, help="conversions per batch the classifier loss sees"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--cache", default=None, help="folder for trained classifiers (reused when present)")
    parser.add_argument("--log-dir", default=None, help="folder for the training logs (CSV per variant)")
    args = parser.parse_args(argv)
    from chanstat.data import CELL_PAINTING_CHANNELS, PHENOTYPES
    from chanstat.runtime import resolve_device, use_available_cores

    # every synthetic phenotype, in the order of the channels they are planted in
    phenotype_channel = {
        p.name: p.channel for p in sorted(PHENOTYPES.values(), key=lambda p: CELL_PAINTING_CHANNELS.index(p.channel))
    }

    threads = use_available_cores(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, {threads} torch threads; torch {torch.__version__}")
    jobs = (
        list(phenotype_channel.items())
        if args.all_phenotypes
        else [(args.phenotype, args.channel or phenotype_channel.get(args.phenotype, "Mito"))]
    )
    if args.data == "real":
        jobs = [("real_" + (args.channel or "Mito"), args.channel or "Mito")]
    rows = []
    for name, channel in jobs:
        args.channel = channel
        data = (
            real_set(channel, args.size, args.seed)
            if args.data == "real"
            else synthetic_set(name, args.size, args.n, args.seed)
        )
        t0 = time.perf_counter()
        cache = None
        if args.cache:
            Path(args.cache).mkdir(parents=True, exist_ok=True)
            cache = str(Path(args.cache) / f"{name}_{args.size}_{len(data)}_{args.seed}.pt")
        model, accuracy = classifier_for(data, args.seed, device, cache)
        print(
            f"\n{name}: {len(data)} images {tuple(data.images.shape[1:])}, planted channel {channel}; "
            f"classifier val accuracy {accuracy:.3f} ({time.perf_counter() - t0:.0f} s)"
        )
        reference = None
        for variant in args.variants.split(","):
            row = run_variant(data, model, variant.strip(), args, device)
            row["data"] = name
            rows.append(row)
            reference = reference or row
            print(
                f"  {row['variant']:>5s}: {row['seconds']:6.1f} s, {row['cpu_seconds']:.0f} CPU s ({row['steps']} steps, best {row['best_step']}; "
                f"{row['stop_reason']}); held-out flip {row['held_out_flip']:.3f} conc "
                f"{row['held_out_concentration']:.3f} gap {row['realism_gap']:.2f}; all images: flip "
                f"{row['flip_rate']:.3f}, {channel} share {row['planted_share']:.3f}, corr {row['correlation']:.3f}; "
                f"usable {row['usable']}; λ {row['sparsity_weight']:.3g}"
            )
            print(
                f"         shares {row['shares']}; open channels {row['open_channels']}; "
                f"{row['threads']} thread(s), load {row['load'][0]} -> {row['load'][1]}"
            )
            print(
                f"         vs {reference['variant']}: time x{row['seconds'] / reference['seconds']:.2f}, planted share "
                f"x{row['planted_share'] / max(reference['planted_share'], 1e-9):.2f}, correlation "
                f"x{row['correlation'] / max(reference['correlation'], 1e-9):.2f}, quality/min "
                f"x{row['quality_per_minute'] / max(reference['quality_per_minute'], 1e-9):.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
