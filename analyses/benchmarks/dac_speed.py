"""How fast, and how exact, is chanstat's adaptive DAC? A benchmark (not a test).

On one model and the same image pairs it measures, per mask strategy and for two kinds of
counterfactual (``oracle``: the synthetic screen's rendering of the same cell in the other
class; ``nearest``: the nearest image of the other class in pixel space, as when no generator
is available):

(a) ``chanstat.dacscore.dac`` with the adaptive schedule (default): forward passes per curve and
    the largest |DAC difference| of any curve against
(v) ``chanstat.dacscore.dac`` on the full 200-step value grid (every distinct mask scored);
(p) the published loop: one forward pass per threshold at batch size one, CPU morphology
    (scipy) per mask and, for channel-resolved strategies, per channel;
(q) a QuAC-style loop: CPU morphology per channel per threshold, all hybrids of a curve in
    one batch.

(p) and (q) are timed on ``--reference-pairs`` pairs and scaled to all pairs. Printed:
``passes/curve``, ``max|diff|``, and the speedups ``p / a``, ``q / a`` and ``v / a``; then one
call scoring every strategy at once (hybrids of all strategies share forward passes).

On CUDA (``--device cuda``) the model runs channels-last, and bf16 autocast is measured: its
curve scores are compared with float32 on the value grid and it is used for the timings only
if every score stays within 1e-3 (the decision is printed).

Usage::

    python analyses/benchmarks/dac_speed.py                 # 32 pairs, CPU
    python analyses/benchmarks/dac_speed.py --device cuda --pairs 128
    python analyses/benchmarks/dac_speed.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from chanstat.dacscore import dac, structuring_element

STRATEGIES = ("aggregate", "joint", "per_channel", "single_channel")
PAIRINGS = ("oracle", "nearest")
TARGET_PASSES, TARGET_DIFF = 24, 0.01


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- (p) and (q): the loops


def curve_hybrids(real, counterfactual, maps, strategy, steps, closing=10, sigma=2.0):
    """Per sample and curve: the hybrids of every threshold (CPU morphology per mask and plane)."""
    element = structuring_element(closing, "ellipse")
    magnitude = maps.abs().numpy()
    n, c = real.shape[:2]
    thresholds = 1.0 - np.arange(steps + 1) / steps
    for i in range(n):
        if strategy == "aggregate":
            planes, curves = magnitude[i].sum(0, keepdims=True), [[0]]
        elif strategy == "single_channel":
            planes, curves = magnitude[i], [[k] for k in range(c)]
        else:
            planes, curves = magnitude[i], [list(range(c))]
        if strategy == "joint":
            normalised = planes / max(planes.max(), 1e-30)
        else:
            normalised = planes / np.maximum(planes.max(axis=(1, 2), keepdims=True), 1e-30)
        for curve in curves:
            hybrids = []
            for k, t in enumerate(thresholds):
                hybrid = counterfactual[i].clone()
                for p in curve:
                    mask = normalised[p] > t if k < steps else np.ones(normalised[p].shape, bool)
                    closed = ndi.binary_erosion(ndi.binary_dilation(mask, element), element, border_value=1)
                    weight = torch.from_numpy(
                        ndi.gaussian_filter(closed.astype(np.float32), sigma, mode="mirror", truncate=2.5)
                    )
                    for ch in range(c) if strategy == "aggregate" else [p]:
                        hybrid[ch] = weight * real[i, ch] + (1 - weight) * counterfactual[i, ch]
                hybrids.append(hybrid)
            yield i, hybrids


def published_loop(model, real, counterfactual, maps, target, strategy, steps) -> int:
    """One forward pass per threshold at batch size one; ``.item()`` per hybrid, as published."""
    device = next(model.parameters()).device
    passes = 0
    with torch.no_grad():
        p_cf = torch.softmax(model(counterfactual.to(device)), 1)
        for i, hybrids in curve_hybrids(real, counterfactual, maps, strategy, steps):
            y = int(target[i])
            for hybrid in hybrids:
                torch.softmax(model(hybrid[None].to(device)), 1)[0, y].item() - p_cf[i, y].item()
                passes += 1
    return passes


def quac_loop(model, real, counterfactual, maps, target, strategy, steps) -> int:
    """CPU morphology per channel per threshold, all hybrids of a curve in one batch."""
    device = next(model.parameters()).device
    passes = 0
    with torch.no_grad():
        p_cf = torch.softmax(model(counterfactual.to(device)), 1)
        for i, hybrids in curve_hybrids(real, counterfactual, maps, strategy, steps):
            y = int(target[i])
            scores = torch.softmax(model(torch.stack(hybrids).to(device)), 1)[:, y] - p_cf[i, y]
            scores.cpu().numpy()
            passes += len(hybrids)
    return passes


# --------------------------------------------------------------------------- set-up


def nearest_other(
    images: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor, pool_labels: torch.Tensor
) -> np.ndarray:
    """Index into ``pool`` of the nearest (L2) image of another class, per image."""
    distance = torch.cdist(images.flatten(1), pool.flatten(1))
    distance[labels[:, None] == pool_labels[None, :]] = float("inf")
    return distance.argmin(dim=1).numpy()


def make_inputs(args, device):
    from chanstat.data import synthetic
    from chanstat.models import VGGClassifier, load_checkpoint, train

    wells = max(2, -(-args.pairs // (2 * 2 * 4)))
    ds = synthetic(n_plates=2, wells_per_class=wells, sites_per_well=4, size=args.size, seed=args.seed)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, device).model
    else:
        torch.manual_seed(args.seed)
        model = VGGClassifier(len(ds.channels), len(ds.classes))
        train(model, ds, epochs=args.epochs, batch_size=16, lr=2e-3, seed=args.seed, min_epochs=0, progress=False)
    model = model.to(device).eval()
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(ds.labels), size=min(args.pairs, len(ds.labels)), replace=False))
    real, labels = ds.images[idx], ds.labels[idx]
    pairs = {}
    for pairing in args.pairings:
        if pairing == "oracle":
            cf, cf_labels = ds.counterfactuals[idx], ds.counterfactual_target[idx]
        else:
            partner = nearest_other(real, labels, ds.images, ds.labels)
            cf, cf_labels = ds.images[partner], ds.labels[partner]
        if args.method == "residual":
            maps = (real - cf).abs()
        else:
            from chanstat.attribution import attribute

            options = {"n_steps": 32} if args.method == "d_ig" else {}
            maps = (
                attribute(
                    model, real, labels, args.method, counterfactuals=cf, counterfactual_target=cf_labels, **options
                )
                .float()
                .cpu()
            )
        pairs[pairing] = (cf, maps)
    return model, real, labels, pairs


def timed(device, fn):
    """Seconds of ``fn()`` and its result, cold: nothing remembered from an earlier call
    (`chanstat.dacscore.coalitions`)."""
    from chanstat.dacscore.coalitions import forget

    forget()
    synchronise(device)
    t0 = time.perf_counter()
    out = fn()
    synchronise(device)
    return time.perf_counter() - t0, out


def choose_autocast(model, real, labels, cf, maps, device, steps) -> tuple[contextlib.AbstractContextManager, dict]:
    """bf16 autocast on CUDA when every value-grid score stays within 1e-3 of float32."""
    if device.type != "cuda":
        return contextlib.nullcontext(), {"autocast": None}
    kwargs = dict(counterfactuals=cf, strategy=list(STRATEGIES), schedule="value", steps=steps)
    fp32 = dac(model, real, labels, maps, **kwargs).curves["score"].to_numpy()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = dac(model, real, labels, maps, **kwargs).curves["score"].to_numpy()
    worst = float(np.abs(fp32 - bf16).max())
    use = worst <= 1e-3
    print(
        f"bf16 autocast: largest |score difference| vs float32 = {worst:.2e} -> {'used' if use else 'not used (> 1e-3)'}"
    )
    context = torch.autocast("cuda", dtype=torch.bfloat16) if use else contextlib.nullcontext()
    return context, {"autocast": "bf16" if use else None, "bf16_max_score_difference": worst}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=None, help="adaptive tolerance (default: dac's)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--pairings", nargs="+", default=list(PAIRINGS), choices=PAIRINGS)
    parser.add_argument("--method", default="d_ig", help="attribution method of the maps (d_ig, d_ixg, residual, ...)")
    parser.add_argument("--reference-pairs", type=int, default=2, help="pairs the loops (p), (q) are timed on")
    parser.add_argument("--skip-loops", action="store_true", help="do not time the published and QuAC-style loops")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of the benchmark model")
    parser.add_argument("--checkpoint", default=None, help="model.pt of a run instead of training one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="8 pairs, 50 steps, loops on 1 pair, 2 epochs")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.steps, args.epochs, args.reference_pairs = min(args.pairs, 8), min(args.steps, 50), 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from chanstat.runtime import resolve_device

    device = resolve_device(args.device)
    model, real, labels, pairs = make_inputs(args, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    n = len(real)
    ref = min(args.reference_pairs, n)
    print(
        f"device={device} threads={torch.get_num_threads()} pairs={n} steps={args.steps} image={tuple(real.shape[1:])} "
        f"maps={args.method}; loops timed on {ref} pairs and scaled"
    )
    first_cf, first_maps = next(iter(pairs.values()))
    autocast, precision = choose_autocast(model, real[:8], labels[:8], first_cf[:8], first_maps[:8], device, args.steps)
    options = {} if args.tolerance is None else {"tolerance": args.tolerance}
    rows = []
    with autocast:
        dac(
            model,
            real[:2],
            labels[:2],
            first_maps[:2],
            counterfactuals=first_cf[:2],
            strategy=list(args.strategies),
            steps=10,
        )
        print(
            f"{'pairing':8s} {'strategy':15s} {'passes/curve':>12s} {'value grid':>10s} {'max|diff|':>9s} "
            f"{'adaptive s':>10s} {'value s':>8s} {'published s':>11s} {'QuAC s':>8s} "
            f"{'x published':>11s} {'x QuAC':>7s} {'x value':>7s}"
        )
        for pairing, (cf, maps) in pairs.items():
            for strategy in args.strategies:
                common = dict(counterfactuals=cf, strategy=strategy, steps=args.steps)
                t_a, adaptive = timed(
                    device, lambda: dac(model, real, labels, maps, schedule="adaptive", **common, **options)
                )
                t_v, value = timed(device, lambda: dac(model, real, labels, maps, schedule="value", **common))
                diff = np.abs(adaptive.scores["dac"].to_numpy() - value.scores["dac"].to_numpy())
                mean_diff = abs(adaptive.scores["dac"].mean() - value.scores["dac"].mean())
                row = dict(
                    pairing=pairing,
                    strategy=strategy,
                    passes_per_curve=adaptive.stats[strategy]["forward_passes_per_curve"],
                    value_passes_per_curve=value.stats[strategy]["forward_passes_per_curve"],
                    points_per_curve=args.steps + 1,
                    max_abs_dac_difference=float(diff.max()),
                    mean_dac_difference=float(mean_diff),
                    adaptive_s=round(t_a, 3),
                    value_s=round(t_v, 3),
                )
                if not args.skip_loops:
                    sub = (real[:ref], cf[:ref], maps[:ref], labels[:ref], strategy, args.steps)
                    t_p, _ = timed(device, lambda: published_loop(model, *sub))
                    t_q, _ = timed(device, lambda: quac_loop(model, *sub))
                    row.update(
                        published_s=round(t_p * n / ref, 3),
                        quac_s=round(t_q * n / ref, 3),
                        speedup_vs_published=round(t_p * n / ref / t_a, 1),
                        speedup_vs_quac=round(t_q * n / ref / t_a, 1),
                    )
                row["speedup_vs_value_grid"] = round(t_v / t_a, 2)
                rows.append(row)
                ok = row["passes_per_curve"] <= TARGET_PASSES and row["max_abs_dac_difference"] <= TARGET_DIFF
                print(
                    f"{pairing:8s} {strategy:15s} {row['passes_per_curve']:12.1f} {row['value_passes_per_curve']:10.1f} "
                    f"{row['max_abs_dac_difference']:9.4f} {t_a:10.2f} {t_v:8.2f} {row.get('published_s', float('nan')):11.1f} "
                    f"{row.get('quac_s', float('nan')):8.1f} {row.get('speedup_vs_published', float('nan')):11.1f} "
                    f"{row.get('speedup_vs_quac', float('nan')):7.1f} {row['speedup_vs_value_grid']:7.2f}"
                    f"  {'meets' if ok else 'MISSES'} target (<= {TARGET_PASSES} passes, <= {TARGET_DIFF})"
                )
        # every strategy in one call: hybrids of all strategies share forward passes
        cf, maps = first_cf, first_maps
        together_s, together = timed(
            device,
            lambda: dac(
                model,
                real,
                labels,
                maps,
                counterfactuals=cf,
                strategy=list(args.strategies),
                steps=args.steps,
                **options,
            ),
        )
        separate_s = sum(r["adaptive_s"] for r in rows if r["pairing"] == next(iter(pairs)))
    print(
        f"all strategies in one call: {together_s:.2f} s vs {separate_s:.2f} s one strategy at a time "
        f"({together.stats and sum(s['forward_passes'] for s in together.stats.values())} forward passes)"
    )
    out = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "pairs": n,
        "steps": args.steps,
        "image": list(real.shape[1:]),
        "method": args.method,
        "reference_pairs": ref,
        **precision,
        "rows": rows,
        "all_strategies_s": round(together_s, 3),
        "one_at_a_time_s": round(separate_s, 3),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
