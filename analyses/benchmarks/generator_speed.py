"""How fast does the conversion network train and generate, and how long to a usable one?

Prints, on the device it runs on:

- training images/s of :func:`chanstat.counterfactual.generator.train_generator` (one
  discriminator and one generator update per batch), and as a ratio against the classifier's
  own training throughput (forward + backward of the VGG classifier, measured in the same run);
- generation images/s of the candidate selection (``n_latent + n_reference`` candidates per
  image, each converted and classified) and candidates/s;
- the wall time to a *usable* generator: training continues in chunks of ``--check-every``
  steps (resumed from its checkpoint) until the counterfactuals flip the classifier for at
  least ``--flip`` of the images; training and checking times are reported separately.

Default data: the demo's quick synthetic set (2 plates x 3 wells x 8 sites per class, 48 px,
Mito fragmentation). Example::

    python analyses/benchmarks/generator_speed.py --threads 2
    python analyses/benchmarks/generator_speed.py --device cuda --phenotype er_intensity --size 32
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--phenotype", default="mito_fragmentation")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--speed-steps", type=int, default=30, help="steps timed for the training throughput")
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--flip", type=float, default=0.8, help="flip rate of a usable generator")
    parser.add_argument("--candidates", type=int, default=10, help="candidates per image (half latent, half reference)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from chanstat.counterfactual import generate_counterfactuals
    from chanstat.counterfactual.generator import select_counterfactuals, train_generator
    from chanstat.data import synthetic
    from chanstat.models import VGGClassifier, train
    from chanstat.runtime import resolve_device

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    data = synthetic(n_plates=2, wells_per_class=3, sites_per_well=8, size=args.size, phenotype=args.phenotype, seed=0)
    print(f"data: {len(data)} images of {tuple(data.images.shape[1:])}, phenotype {args.phenotype}")

    torch.manual_seed(0)
    widths = (8, 16, 32) if args.size <= 32 else (16, 32, 64)
    model = VGGClassifier(len(data.channels), len(data.classes), widths=widths)
    t0 = time.perf_counter()
    fit = train(model, data, epochs=40, batch_size=8, lr=2e-3, patience=10, min_epochs=20, seed=0, device=device,
                progress=False)
    model.eval()
    print(f"classifier: val accuracy {fit.val_accuracy:.3f} in {time.perf_counter() - t0:.1f} s")

    # reference: the classifier's own training throughput (forward + backward) on the same device
    x = data.images[: args.batch_size].to(device)
    y = data.labels[: args.batch_size].to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    model.train()
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    classifier_rate = reps * args.batch_size / (time.perf_counter() - t0)
    model.eval()

    short = train_generator(data, model, steps=args.speed_steps, batch_size=args.batch_size, seed=0, device=device,
                            progress=False, log_every=args.speed_steps)
    train_rate = args.speed_steps * args.batch_size / short.seconds
    print(f"generator training: {train_rate:.1f} images/s ({args.speed_steps} steps of {args.batch_size}); "
          f"classifier training: {classifier_rate:.1f} images/s; ratio {train_rate / classifier_rate:.3f}")

    n_latent = args.candidates // 2
    n_reference = args.candidates - n_latent
    t0 = time.perf_counter()
    select_counterfactuals(short.network, model, data.images, (1 - data.labels), references=data.images,
                           reference_labels=data.labels, n_latent=n_latent, n_reference=n_reference, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(f"generation: {len(data) / seconds:.1f} images/s with {args.candidates} candidates each "
          f"({len(data) * args.candidates / seconds:.1f} candidates/s)")

    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        steps, train_seconds, check_seconds, flip = 0, 0.0, 0.0, 0.0
        while steps < args.max_steps:
            steps += args.check_every
            fit_g = train_generator(data, model, steps=steps, batch_size=args.batch_size, seed=0, device=device,
                                    checkpoint_dir=folder, resume=True, progress=False, log_every=args.check_every,
                                    patience=0)  # this loop checks by itself: no early stop
            train_seconds = fit_g.seconds
            t0 = time.perf_counter()
            result = generate_counterfactuals(data, "generator", model=model, generator=fit_g.network, device=device,
                                              n_latent=n_latent, n_reference=n_reference)
            check_seconds += time.perf_counter() - t0
            flip = float(result.summary["flip_rate"].iloc[0])
            share = result.summary.set_index("channel")["change_share"].round(3).to_dict()
            print(f"  step {steps}: flip rate {flip:.3f}, change share {share}, training {train_seconds:.1f} s")
            if flip >= args.flip:
                break
    usable = "usable" if flip >= args.flip else f"NOT usable after {steps} steps"
    print(f"time to a usable generator (flip >= {args.flip}): {usable}; {steps} steps, training {train_seconds:.1f} s "
          f"+ checks {check_seconds:.1f} s = {train_seconds + check_seconds:.1f} s wall; "
          f"{time.process_time() - cpu0:.1f} s of CPU time (wall exceeds CPU / threads when the machine is shared)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
