"""Device-dependent defaults of generator training: small and short on the CPU, full on CUDA.

The stopping rule (:mod:`~chanstat.counterfactual.generator.monitor`) decides when training
ends; ``steps`` is only the upper bound. With channel sparsity on, the checks plateau twice:
once before the gates are pruned and once after, sooner (``max(2, patience // 2)`` checks). Every value here is a default: an option given to
:func:`~chanstat.counterfactual.generator.train_generator` (or in ``[counterfactual.generator]``)
replaces it.

=================  ==========================================  ==========================================
setting            CPU                                         CUDA
=================  ==========================================  ==========================================
architecture       widths [8, 16], style 8, 1 bottleneck block  widths [16, 32, 64], style 16, 2 blocks
steps (maximum)    1500                                        20000
batch size         8                                           16
check every        25 steps                                    250 steps
patience           8 checks                                    6 checks
min steps          750 (the real field's checks plateau later   1000
                   by themselves: ~1200-1500 steps)
R1 every           4 steps (lazy regularisation)               1 step
classifier loss    on 4 of the 8 conversions (random subset)    on the whole batch
loss changes       diversity 0, cycle 0 (identity + sparsity   none (StarGAN v2 defaults)
                   keep the content; each saves a pass)
=================  ==========================================  ==========================================
"""

from __future__ import annotations

import copy

import torch

PROFILES: dict[str, dict] = {
    "cpu": dict(
        architecture=dict(widths=[8, 16], style_dim=8, latent_dim=8, n_bottleneck=1, mapping_width=32),
        steps=1500,
        batch_size=8,
        check_every=25,
        patience=8,
        min_steps=750,
        r1_every=4,
        classifier_images=4,
        loss=dict(diversity=0.0, cycle=0.0),
    ),
    "cuda": dict(
        architecture=dict(widths=[16, 32, 64], style_dim=16, latent_dim=8, n_bottleneck=2, mapping_width=64),
        steps=20000,
        batch_size=16,
        check_every=250,
        patience=6,
        min_steps=1000,
        r1_every=1,
        classifier_images=None,
        loss=dict(),
    ),
}


def training_profile(device) -> dict:
    """The defaults for ``device`` (a copy): ``"cuda"`` for CUDA devices, ``"cpu"`` otherwise."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return {**copy.deepcopy(PROFILES[kind]), "profile": kind}
