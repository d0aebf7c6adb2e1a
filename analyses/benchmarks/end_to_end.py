"""The new user's end-to-end workload, the defaults shipped before issue 26 against today's, in one run.

Workload (issue 26; ``--tiles`` / ``--size`` reduce it): synthetic Cell Painting tiles with a
phenotype planted in one channel, the user's own ResNet-18 (`chanstat.models.resnet.resnet18`,
torchvision layout: 7x7/2 stem and max pooling, widths 64-512; trained here, not timed), then

1. ``generator``: the learned generator's counterfactuals,
2. ``attribution``: ``ig``, ``saliency``, ``d_ig``, ``d_ixg``,
3. ``dac``: single-channel DAC of the ``d_ig`` maps,
4. ``shapley``: exact channel Shapley values (counterfactual baseline).

``before`` -- the defaults shipped before issue 26, as the new user ran them: one torch thread;
the generator with ``--old-steps`` fixed steps (400) and the old architecture and losses
(widths [16, 32], style 16, batch 16, diversity 0.5, cycle 1, identity 2, R1 every step, no
sparsity, no held-out checks); 50 integration steps; DAC with its defaults of then (adaptive
schedule, 200 steps, tolerance 0.0025). With ``--before-tree DIR`` (a source tree of the
pre-issue-26 commit, e.g. ``git archive 325e25a chanstat | tar -x -C DIR``) it runs that code
in a subprocess on the same tiles and classifier (on the CPU); otherwise today's code with those settings
(which then also carries today's engineering gains in DAC and Shapley).

``new`` -- today's defaults: the idle cores (``--threads`` forces a count), the device profile
with the stopping rule and data-chosen sparsity, ``n_steps="auto"``, adaptive DAC, Shapley
reusing DAC's coalitions.

Prints seconds per phase and in total, the speedup per phase and overall (before / new), the
channel each run names (largest mean single-channel DAC of ``d_ig``; largest mean Shapley
value), the planted channel's DAC and the generator's change share there, and the load
average before and after each run (the machine may be shared). Example::

    python analyses/benchmarks/end_to_end.py --tiles 96 --size 48              # reduced
    python analyses/benchmarks/end_to_end.py --tiles 258 --size 64 --threads 2 # the full workload
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESNET_FILE = Path(__file__).resolve().parents[2] / "chanstat" / "models" / "resnet.py"
#: the generator settings shipped before issue 26 (old ConversionNetwork and LossWeights defaults)
BEFORE_GENERATOR = dict(
    train_batch_size=16,
    architecture=dict(widths=[16, 32], style_dim=16, latent_dim=8, n_bottleneck=2, mapping_width=64),
    loss=dict(diversity=0.5, cycle=1.0, identity=2.0),
)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def tiles(args):
    """The synthetic tiles (the same in any source tree: seeded)."""
    from chanstat.data import synthetic

    sites = max(1, -(-args.tiles // 16))
    data = synthetic(
        n_plates=2, wells_per_class=4, sites_per_well=sites, size=args.size, phenotype=args.phenotype, seed=0
    )
    return data.subset(list(range(min(args.tiles, len(data)))))


def fingerprint(data) -> str:
    import numpy as np

    return hashlib.blake2b(np.ascontiguousarray(np.asarray(data.images, dtype=np.float32)).tobytes()).hexdigest()[:16]


def classifier(args, n_channels: int, n_classes: int):
    """The ResNet-18, loaded from its file (so an older source tree without it runs it too)."""
    spec = importlib.util.spec_from_file_location("e2e_resnet", RESNET_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.resnet18(n_channels, n_classes, width=args.resnet_width, small_input=args.small_input)


def workload(data, model, *, before: bool, args, device) -> dict:
    """One run of the four phases; seconds per phase and what it names."""
    import torch

    from chanstat.attribution import attribute
    from chanstat.counterfactual import generate_counterfactuals
    from chanstat.decompose import channel_shapley

    try:
        from chanstat.dacscore import dac
    except ImportError:  # the tree before issue 26
        from chanstat.dac import dac
    try:
        from chanstat.attribution.gradients import recording_integration, summarise_integration
    except ImportError:
        recording_integration = summarise_integration = None

    if before:
        torch.set_num_threads(1)
        threads = 1
    else:
        from chanstat.runtime import use_available_cores

        threads = use_available_cores(args.threads)
    load = [load_avg()]
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if before and args.before_tree:
        options: dict = dict(steps=args.old_steps)  # the old code's own defaults otherwise
    elif before:
        options = dict(steps=args.old_steps, sparsity=0.0, held_out=0.0, check_every=10**9, **BEFORE_GENERATOR)
        options["loss"] = dict(options["loss"], r1_every=1)  # train_generator keyword, passed through the loss dict
    else:
        options = dict(time_budget=args.time_budget)
        if args.min_steps is not None:
            options["min_steps"] = args.min_steps
    result = generate_counterfactuals(
        data, "generator", model=model, device=device, seed=0, n_latent=10, n_reference=10, progress=False, **options
    )
    times["generator"], cpu["generator"] = time.perf_counter() - t0, time.process_time() - c0
    x, y = data.images, data.labels
    xc = result.counterfactuals
    yc = getattr(result, "counterfactual_target", None)
    yc = result.target_labels if yc is None else yc  # the name before issue 26
    steps = {"n_steps": 50} if before else {}
    maps = {}
    t0, c0 = time.perf_counter(), time.process_time()
    records: list = []
    context = recording_integration() if recording_integration else None
    if context is not None:
        records = context.__enter__()
    for method in ("ig", "saliency", "d_ig", "d_ixg"):
        maps[method] = attribute(
            model,
            x,
            y,
            method,
            counterfactuals=xc,
            counterfactual_target=yc,
            batch_size=64,
            **(steps if method in ("ig", "d_ig") else {}),
        )
    if context is not None:
        context.__exit__(None, None, None)
    times["attribution"], cpu["attribution"] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    dac_result = dac(
        model,
        x,
        y,
        maps["d_ig"],
        counterfactuals=xc,
        counterfactual_target=yc,
        channels=data.channels,
        strategy="single_channel",
    )
    times["dac"], cpu["dac"] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    shapley = channel_shapley(model, x, y, counterfactuals=xc, channels=data.channels, device=device)
    times["shapley"], cpu["shapley"] = time.perf_counter() - t0, time.process_time() - c0
    load.append(load_avg())
    by_channel = dac_result.scores.groupby("channel")["dac"].mean()
    phi = shapley.values.groupby("channel")["shapley"].mean()
    share = result.summary.set_index("channel")["change_share"]
    info = getattr(result, "info", {}) or {}
    return {
        "rule": "before" if before else "new",
        "code": args.before_tree if (before and args.before_tree) else "today",
        "threads": threads,
        "load_average": load,
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "total": round(sum(times.values()), 2),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_total": round(sum(cpu.values()), 2),
        "dac_channel": str(by_channel.idxmax()),
        "dac_planted": float(by_channel[args.channel]),
        "dac_by_channel": {k: round(float(v), 4) for k, v in by_channel.items()},
        "shapley_channel": str(phi.idxmax()),
        "shapley_by_channel": {k: round(float(v), 4) for k, v in phi.items()},
        "dac_forward_passes": dac_result.stats,
        "shapley_forward_passes": shapley.settings.get("forward_passes"),
        "flip_rate": float(result.summary["flip_rate"].iloc[0]),
        "change_share_planted": float(share[args.channel]),
        "integration": summarise_integration(records) if summarise_integration else {},
        "generator_steps": info.get("training_steps"),
    }


def run_before_tree(args, state_file: str) -> dict:
    """The ``before`` run in a subprocess on the pre-issue-26 source tree."""
    out = Path(state_file).with_suffix(".json")
    command = [sys.executable, __file__, "--worker", state_file, "--worker-out", str(out)] + args.passthrough
    env = dict(os.environ, PYTHONPATH=str(Path(args.before_tree).resolve()))
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


def worker(args) -> int:
    """Runs inside the old tree: the same tiles and classifier weights, the ``before`` workload."""
    import torch

    import chanstat

    state = torch.load(args.worker)
    data = tiles(args)
    if fingerprint(data) != state["fingerprint"]:
        raise SystemExit("the old tree's synthetic tiles differ from today's: no like-for-like comparison")
    model = classifier(args, len(data.channels), len(data.classes))
    model.load_state_dict(state["weights"])
    model = model.eval()
    row = workload(data, model, before=True, args=args, device=torch.device("cpu"))
    row["code"] = str(Path(chanstat.__file__).parents[1])
    Path(args.worker_out).write_text(json.dumps(row, default=str))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tiles", type=int, default=96)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--phenotype", default="rna_nucleoli")
    parser.add_argument("--resnet-width", type=int, default=64)
    parser.add_argument("--small-input", action="store_true", help="3x3 stem without pooling (not torchvision's)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--old-steps", type=int, default=400, help="fixed generator steps of the run before")
    parser.add_argument("--time-budget", type=float, default=None, help="generator training seconds at most (new)")
    parser.add_argument("--threads", type=int, default=None, help="threads of the new run (default: idle cores)")
    parser.add_argument("--min-steps", type=int, default=None, help="generator min steps of the new run (default: profile)")
    parser.add_argument("--before-tree", default=None, help="source tree of the code before issue 26")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=("before", "new"), default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from chanstat.data import PHENOTYPES  # the same in the tree before issue 26

    args.channel = PHENOTYPES[args.phenotype].channel
    args.passthrough = [
        f"--tiles={args.tiles}",
        f"--size={args.size}",
        f"--phenotype={args.phenotype}",
        f"--resnet-width={args.resnet_width}",
        f"--old-steps={args.old_steps}",
        f"--before-tree={args.before_tree}",
    ] + (["--small-input"] if args.small_input else [])
    if args.worker:
        return worker(args)

    import torch

    from chanstat.models import train
    from chanstat.runtime import resolve_device

    torch.set_num_threads(1)
    device = resolve_device(args.device)
    data = tiles(args)
    torch.manual_seed(0)
    model = classifier(args, len(data.channels), len(data.classes))
    t0 = time.perf_counter()
    fit = train(
        model,
        data,
        epochs=args.epochs,
        batch_size=16,
        lr=2e-3,
        patience=args.epochs,
        min_epochs=5,
        seed=0,
        device=device,
        progress=False,
    )
    model = model.eval().to(device)
    print(
        f"device {device}; {len(data)} tiles {tuple(data.images.shape[1:])}, planted {args.channel}; ResNet-18 "
        f"(width {args.resnet_width}) val accuracy {fit.val_accuracy:.3f} ({time.perf_counter() - t0:.0f} s, "
        f"not counted); load average {load_avg()}",
        flush=True,
    )
    rows = []
    for before in (True, False):
        if args.only and args.only != ("before" if before else "new"):
            continue
        if before and args.before_tree:
            with tempfile.TemporaryDirectory() as tmp:
                state_file = str(Path(tmp) / "state.pt")
                weights = {k: v.cpu() for k, v in model.state_dict().items()}
                torch.save({"weights": weights, "fingerprint": fingerprint(data)}, state_file)
                row = run_before_tree(args, state_file)
        else:
            row = workload(data, model, before=before, args=args, device=device)
        rows.append(row)
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in row["seconds"].items())
        print(
            f"{row['rule']:6s} ({row['threads']} threads, load {row['load_average']}, code {row['code']}): {phases}; "
            f"total {row['total']:.1f} s; names {row['dac_channel']} (DAC) / {row['shapley_channel']} (Shapley); "
            f"{args.channel} DAC {row['dac_planted']:.3f}; flip {row['flip_rate']:.3f}; change share "
            f"{args.channel} {row['change_share_planted']:.3f}; DAC passes {row['dac_forward_passes']}; "
            f"Shapley passes {row['shapley_forward_passes']}",
            flush=True,
        )
        for method, s in row["integration"].items():
            print(f"      {method}: steps mean {s['mean_steps']}, max error {s['max_error']:.2e}")
        print(
            "       CPU seconds (all threads of the process; on a shared machine the steadier measure): "
            + ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_seconds"].items())
            + f"; total {row['cpu_total']:.1f}"
        )
    if len(rows) == 2:
        old, new = rows
        for key, total, label in (("seconds", "total", "wall"), ("cpu_seconds", "cpu_total", "CPU")):
            print(
                f"speedup before / new ({label}): total x{old[total] / new[total]:.2f}; "
                + ", ".join(f"{k} x{old[key][k] / max(new[key][k], 1e-9):.2f}" for k in old[key])
            )
        print(
            f"same named channel: {old['dac_channel'] == new['dac_channel']} (DAC), "
            f"{old['shapley_channel'] == new['shapley_channel']} (Shapley); |DAC difference| in {args.channel}: "
            f"{abs(old['dac_planted'] - new['dac_planted']):.3f} (target <= 0.05)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
