"""Integration steps of IG / D-IG at equal completeness error: fixed 50 steps vs steps chosen per image.

For IG (zero baseline) and D-IG (oracle counterfactuals) of a trained classifier on synthetic
Cell Painting crops, prints per rule: mean and largest steps per image, median / largest
completeness error ``|sum(map) - (f(x) - f(baseline))| / |f(x) - f(baseline)|``, share of images
within 1 %, seconds, and the time ratio against the reference (fixed 50 Gauss-Legendre steps,
measured in the same run). Rules:

- ``fixed50_gl`` / ``fixed50_riemann``: 50 steps (Gauss-Legendre / trapezoid), the old default;
- ``auto_gl``: ``n_steps="auto"`` (8, 16, 32, 64, 128 steps per image until the error is within
  ``--tolerance``), the new default;
- ``auto_riemann``: the same rule with the trapezoid rule (what the quadrature saves).

Example::

    python analyses/benchmarks/integration_steps.py --images 64 --size 48
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--phenotype", default="mito_fragmentation")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from chanstat.attribution import attribute
    from chanstat.attribution.gradients import recording_integration, summarise_integration
    from chanstat.data import synthetic
    from chanstat.models import VGGClassifier, train
    from chanstat.runtime import resolve_device, use_available_cores

    threads = use_available_cores(args.threads)
    device = resolve_device(args.device)
    sites = max(1, args.images // 16)
    data = synthetic(n_plates=2, wells_per_class=4, sites_per_well=sites, size=args.size, phenotype=args.phenotype, seed=0)
    torch.manual_seed(0)
    model = VGGClassifier(len(data.channels), len(data.classes), widths=(8, 16, 32))
    train(model, data, epochs=args.epochs, batch_size=16, lr=3e-3, patience=args.epochs, min_epochs=args.epochs, seed=0,
          device=device, progress=False)
    model = model.eval().to(device)
    n = min(args.images, len(data))
    x, y = data.images[:n], data.labels[:n]
    xc, yc = data.counterfactuals[:n], data.counterfactual_target[:n]
    print(f"device {device}, {threads} threads; {n} images {tuple(x.shape[1:])}, tolerance {args.tolerance:.0%}")
    rules = {
        "fixed50_gl": dict(n_steps=50, quadrature="gausslegendre"),
        "fixed50_riemann": dict(n_steps=50, quadrature="riemann_trapezoid"),
        "auto_gl": dict(n_steps="auto", quadrature="gausslegendre"),
        "auto_riemann": dict(n_steps="auto", quadrature="riemann_trapezoid", max_steps=512),
    }
    rows = []
    for method in ("ig", "d_ig"):
        reference = None
        for rule, options in rules.items():
            t0 = time.perf_counter()
            with recording_integration() as records:
                attribute(model, x, y, method, counterfactuals=xc, counterfactual_target=yc, tolerance=args.tolerance,
                          **options)
            seconds = time.perf_counter() - t0
            s = summarise_integration(records)[method]
            reference = reference or seconds
            row = {"method": method, "rule": rule, "seconds": seconds, "time_vs_fixed50_gl": seconds / reference, **s}
            rows.append(row)
            print(f"{method:5s} {rule:16s} steps mean {s['mean_steps']:6.1f} max {s['max_steps']:4d} evaluated "
                  f"{s['mean_evaluated_steps']:6.1f}; error median "
                  f"{s['median_error']:.2e} max {s['max_error']:.2e}; within {s['within_tolerance']:.2f}; "
                  f"{seconds:6.2f} s (x{seconds / reference:.2f} of fixed50_gl)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
