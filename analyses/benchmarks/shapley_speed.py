"""What does an exact channel Shapley decomposition cost, next to one single-channel DAC curve?

On one model, the same image pairs and the same batch size it times, in one run:

(a) ``chanstat.decompose.channel_shapley`` with the counterfactual as baseline (2^C hybrids per
    image; 32 for the five stains), and
(b) ``chanstat.dacscore`` with ``strategy="single_channel"`` on stain-shaped maps (one curve per
    channel), divided by the number of channels: the cost of one single-channel DAC curve; with
    the ``value`` schedule (all ``steps + 1`` points, as published) and, where ``dac`` has it,
    its default ``adaptive`` schedule (only some points go through the model).

Every timed run starts cold (`chanstat.dacscore.coalitions.forget`): nothing remembered from
an earlier run. ``dac_then_shapley`` times the pair as a pipeline runs it, DAC (adaptive) and
then Shapley, which reuses the coalitions DAC evaluated (the empty, full and single-channel
sets: 7 of 32 per image); ``reuse_saving`` is its time against the two runs alone.

It prints seconds per image for both and ``ratio = shapley / one_curve`` per schedule (below 1:
the whole Shapley decomposition is cheaper than one DAC curve), with the forward passes of each,
and Shapley's time against its bare forward passes (32 hybrids per image, same batch size and
input layout).

Usage::

    python analyses/benchmarks/shapley_speed.py                 # 32 pairs of 5 x 64 x 64, CPU
    python analyses/benchmarks/shapley_speed.py --device cuda --n-images 256
    python analyses/benchmarks/shapley_speed.py --quick         # a smoke run

The model is a VGGClassifier trained ``--train-epochs`` epochs on the benchmark's synthetic set
(the forward cost does not depend on the weights, but the adaptive schedule's number of passes
does: an untrained model's flat curves need very few).
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import numpy as np
import torch

from chanstat.dacscore import dac
from chanstat.data import synthetic
from chanstat.decompose import channel_shapley
from chanstat.models import VGGClassifier


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_dac(model, images, cf, maps, target, channels, steps, batch_size, schedule):
    """One single-channel DAC run, whichever argument order ``dac`` has (issue 14 renames it)."""
    params = inspect.signature(dac).parameters
    kwargs = dict(strategy="single_channel", steps=steps, batch_size=batch_size, channels=channels, schedule=schedule)
    if "counterfactuals" in params and params["counterfactuals"].kind == inspect.Parameter.KEYWORD_ONLY:
        return dac(model, images, target, maps, counterfactuals=cf, **kwargs)
    return dac(model, images, cf, maps, target, **kwargs)


def forward_passes(stats: dict) -> float:
    """Forward passes DAC ran, wherever its ``stats`` keep them (per strategy or flat)."""
    found = [v for k, v in stats.items() if k == "forward_passes" and isinstance(v, (int, float))]
    found += [forward_passes(v) for v in stats.values() if isinstance(v, dict)]
    found = [f for f in found if np.isfinite(f)]
    return float(sum(found)) if found else float("nan")


def best_times(runs: dict, device, repeats: int) -> tuple[dict, dict]:
    """Best wall time of every run; repeats interleave the runs so all see the same machine load."""
    from chanstat.dacscore.coalitions import forget

    results = {}
    for name, fn in runs.items():  # warm-up: allocator, oneDNN kernels, layout probe
        forget()
        results[name] = fn()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            forget()  # cold: nothing remembered from the run before
            synchronise(device)
            start = time.perf_counter()
            fn()
            synchronise(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="hybrids per forward pass for both (default: DAC's default)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_images, args.size, args.steps, args.repeats, args.train_epochs = 8, 32, 50, 1, 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = synthetic(n_plates=1, wells_per_class=max(1, args.n_images // 8), sites_per_well=4, size=args.size, seed=0)
    images, cf = data.images[: args.n_images], data.counterfactuals[: args.n_images]
    target = torch.as_tensor(data.labels[: args.n_images])
    channels = list(data.channels)
    # maps shaped like the stains (the images themselves, ties broken by faint noise): every channel
    # gets its own masks that grow along cell structures. Residual maps are empty outside the planted
    # channel (DAC would skip those curves); smooth noise closes to a full mask within a few steps.
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    maps = images + 1e-3 * noise
    torch.manual_seed(0)
    model = VGGClassifier(in_channels=len(channels), n_classes=len(data.classes))
    if args.train_epochs:  # a trained model gives DAC's adaptive schedule realistic (non-flat) curves
        from chanstat.models import train

        train(
            model, data, epochs=args.train_epochs, min_epochs=args.train_epochs, seed=0, device=device, progress=False
        )
    model = model.to(device).eval()
    if args.batch_size is None:
        from chanstat.dacscore.scoring import default_batch_size

        args.batch_size = default_batch_size(device, images[0].numel())
    n = len(images)

    schedules = ["value", "adaptive"] if "adaptive" in str(inspect.signature(dac)) else ["value"]
    runs = {
        "shapley": lambda: channel_shapley(
            model, images, target, counterfactuals=cf, channels=channels, batch_size=args.batch_size, device=device
        )
    }
    for schedule in schedules:  # value: every one of steps + 1 points; adaptive: DAC's default, fewer passes
        runs[f"dac_{schedule}"] = lambda schedule=schedule: run_dac(
            model, images, cf, maps, target, channels, args.steps, args.batch_size, schedule
        )
    if "adaptive" in schedules:
        runs["dac_then_shapley"] = lambda: (runs["dac_adaptive"](), runs["shapley"]())[1]
    hybrids = torch.cat([images[:1]] * 32).to(device)  # the bare forward passes: 32 hybrids per image

    def forward_only():
        from chanstat.dacscore.scoring import input_memory_format

        layout = input_memory_format(model, hybrids[:2])
        with torch.inference_mode():
            for _ in range(n):
                for lo in range(0, 32, args.batch_size):
                    model(hybrids[lo : lo + args.batch_size].contiguous(memory_format=layout))

    runs["forward_only"] = forward_only
    times, results = best_times(runs, device, args.repeats)
    t_shap = times["shapley"]
    n_channels = len(channels)
    out = {
        "device": str(device),
        "threads": args.threads,
        "n_images": n,
        "image_shape": list(images.shape[1:]),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "train_epochs": args.train_epochs,
        "shapley_seconds_per_image": t_shap / n,
        "shapley_forward_passes_per_image": results["shapley"].settings["forward_passes"] / n,
        "forward_only_seconds_per_image_32_hybrids": times["forward_only"] / n,
        "shapley_overhead_vs_forward_only": t_shap / times["forward_only"],
        # a curve with every one of its steps + 1 points through the model (the published loop's
        # pass count, at this batch size): the bare forward time of that many hybrids
        "full_curve_forward_seconds_per_image": times["forward_only"] / n / 32 * (args.steps + 1),
        "ratio_shapley_over_full_curve_forward": t_shap / (times["forward_only"] / 32 * (args.steps + 1)),
    }
    for schedule in schedules:
        t_dac = times[f"dac_{schedule}"]
        per_curve = t_dac / n_channels
        out[f"dac_{schedule}"] = {
            "single_channel_seconds_per_image_all_channels": t_dac / n,
            "one_curve_seconds_per_image": per_curve / n,
            "forward_passes_per_image_per_curve": forward_passes(results[f"dac_{schedule}"].stats) / n / n_channels,
            "ratio_shapley_over_one_curve": t_shap / per_curve,
        }
    if "dac_then_shapley" in times:
        alone = times["dac_adaptive"] + t_shap
        out["dac_then_shapley"] = {
            "seconds_per_image": times["dac_then_shapley"] / n,
            "shapley_forward_passes_per_image": results["dac_then_shapley"].settings["forward_passes"] / n,
            "reuse_saving": 1 - times["dac_then_shapley"] / alone,
        }
    print(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
