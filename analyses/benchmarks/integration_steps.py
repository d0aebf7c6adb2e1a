"""Integration steps of IG / D-IG: fixed 50 Gauss-Legendre steps vs steps chosen from the completeness error.

On (a) the demo (synthetic Cell Painting, 64 px, ``analyses/demo.toml``'s VGG) and (b) tiles of the
real field with a planted Mito phenotype (``generator_quality.real_set``, a VGG), for IG (zero
baseline) and D-IG (oracle counterfactuals), prints per rule: mean / largest gradient evaluations
per image, the batch completeness error (sum of |error| over sum of |f(x) - f(b)|), median /
largest per-image completeness error, the share of images within the tolerance, the map error
against a fine reference (uniform trapezoid, ``--reference`` points; median / largest relative L1
distance, a check the completeness error cannot give), seconds, and the ratio of steps and time to
``fixed50_gl`` (Captum Gauss-Legendre, 50 steps, the old default) measured in the same run. Rules:

- ``fixed50_gl`` / ``fixed25_gl``: Captum Gauss-Legendre, 50 / 25 steps;
- ``fixed50_trap`` / ``fixed17_trap``: uniform trapezoid, 50 / 17 points (end points included);
- ``ladder_gl``: the previous ``"auto"`` (Gauss-Legendre 8, 16, predicted counts up to 128 per image);
- ``adaptive``: the new default ``n_steps="auto"`` (nested adaptive trapezoid from 17 points, stop at 1 %);
- ``adaptive_9``: the same from 9 points; ``adaptive_9_b2``: also requiring the sum of |local errors|
  <= 2 % (no stopping on cancelling errors); ``adaptive_9_var``: bisecting where the gradient changes
  most instead of where the local completeness error is largest.

Seconds are the best of ``--repeats`` calls (the machine may be shared).

Example (1 thread, about 10 minutes on a quiet machine)::

    python analyses/benchmarks/integration_steps.py --images 16 --cache /tmp/ig_models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RULES = {
    "fixed50_gl": dict(n_steps=50, quadrature="gausslegendre"),
    "fixed25_gl": dict(n_steps=25, quadrature="gausslegendre"),
    "fixed50_trap": dict(n_steps=50, quadrature="adaptive"),
    "fixed17_trap": dict(n_steps=17, quadrature="adaptive"),
    "ladder_gl": dict(n_steps="auto", quadrature="gausslegendre"),
    "adaptive": dict(n_steps="auto"),
    "adaptive_9": dict(n_steps="auto", min_steps=9),
    "adaptive_9_b2": dict(n_steps="auto", min_steps=9, local_bound=0.02),
    "adaptive_9_var": dict(n_steps="auto", min_steps=9, refine="variation"),
}


def demo_set(images: int, cache: Path | None):
    """The demo's data and VGG (``analyses/demo.toml``: 2 plates, 4 wells per class, 12 sites, 64 px)."""
    from chanstat.data import synthetic
    from chanstat.models import VGGClassifier, train

    data = synthetic(
        n_plates=2,
        wells_per_class=4,
        sites_per_well=12,
        size=64,
        phenotype="mito_fragmentation",
        effect_size=1.0,
        nuisance=True,
        seed=0,
    )
    torch.manual_seed(0)
    model = VGGClassifier(len(data.channels), len(data.classes), widths=(16, 32, 64))
    path = cache / "demo_vgg.pt" if cache else None
    if path and path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["weights"])
    else:
        fit = train(
            model,
            data,
            epochs=30,
            batch_size=32,
            lr=3e-3,
            patience=6,
            min_epochs=15,
            seed=0,
            device="cpu",
            progress=False,
        )
        if path:
            torch.save({"weights": model.state_dict(), "val_accuracy": float(fit.val_accuracy)}, path)
    return data, model.eval(), _spread(len(data), images)


def real_field_set(images: int, cache: Path | None):
    """Tiles of the real field with a planted Mito phenotype and a VGG trained on them."""
    sys.path.insert(0, str(HERE))
    from generator_quality import classifier_for, real_set

    data = real_set("Mito", 64, 0)
    model, _ = classifier_for(data, 0, "cpu", cache=str(cache / "real_vgg.pt") if cache else None)
    return data, model.eval(), _spread(len(data), images)


def _spread(n: int, k: int) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(k, n)).round().long().unique()


def run(name: str, data, model, idx, args) -> list[dict]:
    from chanstat.attribution import attribute
    from chanstat.attribution.gradients import recording_integration, summarise_integration

    x, y = data.images[idx], data.labels[idx]
    xc, yc = data.counterfactuals[idx], data.counterfactual_target[idx]
    common = dict(counterfactuals=xc, counterfactual_target=yc, tolerance=args.tolerance)
    rows = []
    for method in ("ig", "d_ig"):
        reference = attribute(model, x, y, method, n_steps=args.reference, quadrature="adaptive", **common)
        ref_l1 = reference.abs().flatten(1).sum(1)
        base: dict = {}
        for rule in args.rules.split(","):
            options = RULES[rule]
            seconds = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                with recording_integration() as records:
                    maps = attribute(model, x, y, method, **common, **options)
                seconds = min(seconds, time.perf_counter() - t0)
            s = summarise_integration(records)[method]
            map_error = (maps - reference).abs().flatten(1).sum(1) / ref_l1.clamp_min(1e-12)
            base = base or {"seconds": seconds, "steps": s["mean_evaluated_steps"]}
            row = {
                "data": name,
                "method": method,
                "rule": rule,
                "seconds": round(seconds, 3),
                "time_vs_fixed50_gl": round(seconds / base["seconds"], 3),
                "steps_vs_fixed50_gl": round(s["mean_evaluated_steps"] / base["steps"], 3),
                "map_error_median": float(map_error.median()),
                "map_error_max": float(map_error.max()),
                **{k: v for k, v in s.items() if k != "rule"},
                "quadrature": s["rule"],  # the rule summarise_integration names
            }
            rows.append(row)
            print(
                f"{name:5s} {method:5s} {rule:12s} steps {s['mean_steps']:6.1f} (max {s['max_steps']:3d}, evaluated "
                f"{s['mean_evaluated_steps']:6.1f}, x{row['steps_vs_fixed50_gl']:.2f}); batch error "
                f"{s['batch_error']:.2e}; per image median {s['median_error']:.2e} max {s['max_error']:.2e}, "
                f"within {s['within_tolerance']:.2f}; map error median {row['map_error_median']:.3f} max "
                f"{row['map_error_max']:.3f}; {seconds:6.2f} s (x{row['time_vs_fixed50_gl']:.2f})",
                flush=True,
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--data", default="demo,real")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--reference", type=int, default=257, help="points of the reference trapezoid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per rule (the best counts)")
    parser.add_argument("--cache", default=None, help="folder for the trained models")
    parser.add_argument(
        "--rules", default=",".join(RULES), help="comma-separated subset of the rules (first: reference)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    print(f"cpu, {args.threads} threads, tolerance {args.tolerance:.0%}, reference {args.reference} points", flush=True)
    rows = []
    for name in args.data.split(","):
        data, model, idx = (demo_set if name == "demo" else real_field_set)(args.images, cache)
        print(f"{name}: {len(idx)} of {len(data)} images {tuple(data.images.shape[1:])}", flush=True)
        rows += run(name, data, model, idx, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
