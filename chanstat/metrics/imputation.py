"""Noisy linear imputation (ROAD) solved on the device with batched conjugate gradients.

ROAD (Rong et al., "A consistent and efficient evaluation strategy for attribution methods",
ICML 2022) replaces removed pixels by the weighted mean of their 8 neighbours (weight 1/6 for
the 4 direct neighbours, 1/12 for the diagonals) and adds Gaussian noise, so that the removal
itself leaks as little shape information as possible. Requiring every removed pixel to equal
the weighted mean of its in-image neighbours (removed or not) gives, for the removed set U,

    s_i x_i - sum_{j in U} w_ij x_j = sum_{j not in U} w_ij img_j     for i in U,

with ``s_i`` the summed weight of pixel i's in-image neighbours. The matrix is symmetric and
positive definite whenever every connected removed region touches a kept pixel (a discrete
Dirichlet problem), so conjugate gradients with a Jacobi preconditioner solve it; the
operator is a 3x3 neighbour sum (shifted adds), so all planes of a batch are solved at once
on the device without building a sparse matrix; planes with nothing removed are skipped. A
plane whose pixels are *all* removed has nothing to interpolate from and is filled with 0
(plus noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _neighbour_sum(z: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij z_j over in-image neighbours, for (P, H, W) planes (zero outside the image).

    The 3x3 weights are separable up to the centre: ``outer([1,2,1], [1,2,1]) / 12`` minus
    ``1/3`` at the centre, so two 1-D passes of shifted adds replace a 3x3 convolution.
    """
    p = F.pad(z, (1, 1, 1, 1))
    v = p[:, :-2, :] + 2 * p[:, 1:-1, :] + p[:, 2:, :]
    hsum = v[:, :, :-2] + 2 * v[:, :, 1:-1] + v[:, :, 2:]
    return hsum / 12.0 - z / 3.0


def linear_impute(
    images: torch.Tensor,
    remove: torch.Tensor,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> torch.Tensor:
    """Fill the removed pixels of every plane with the neighbour-averaging solution (no noise).

    Parameters
    ----------
    images : tensor, shape (N, C, H, W), float
    remove : tensor of bool, same shape; True where a pixel is removed.
    tol : stop a plane when its residual norm is below ``tol`` times its right-hand side norm.
    max_iter : conjugate-gradient iterations at most (default ``4 * (H + W) + 50``).

    Returns
    -------
    tensor, shape (N, C, H, W): ``images`` with removed pixels replaced.
    """
    if images.shape != remove.shape or images.ndim != 4:
        raise ValueError(f"images {tuple(images.shape)} and remove {tuple(remove.shape)} must both be (N, C, H, W)")
    n, c, h, w = images.shape
    flat_img = images.reshape(n * c, h, w).to(torch.float32)
    flat_rem = remove.reshape(n * c, h, w).to(torch.bool)
    out = flat_img.clone()
    any_removed = flat_rem.flatten(1).any(dim=1)
    all_removed = flat_rem.flatten(1).all(dim=1)
    # A plane with nothing left to interpolate from is filled with 0; untouched planes are skipped.
    out[all_removed] = torch.where(flat_rem[all_removed], torch.zeros((), device=out.device), out[all_removed])
    solve = torch.nonzero(any_removed & ~all_removed).flatten()
    if solve.numel():
        x_img = flat_img[solve]
        u = flat_rem[solve].to(torch.float32)
        weight_sum = _neighbour_sum(torch.ones(1, h, w, device=images.device))  # s_i

        def apply(z):  # A z on the removed pixels, zero elsewhere
            return u * (weight_sum * z - _neighbour_sum(u * z))

        b = u * _neighbour_sum((1 - u) * x_img)
        inv_diag = u / weight_sum
        z = torch.zeros_like(b)
        r = b.clone()
        pz = inv_diag * r
        p = pz.clone()
        rz = (r * pz).flatten(1).sum(1)
        b_norm = b.flatten(1).norm(dim=1).clamp(min=1e-12)
        active = torch.ones(solve.numel(), dtype=torch.bool, device=images.device)
        iters = max_iter if max_iter is not None else 4 * (h + w) + 50
        for _ in range(iters):
            ap = apply(p)
            pap = (p * ap).flatten(1).sum(1)
            ok = active & (pap > 0)
            alpha = torch.where(ok, rz / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
            z = z + alpha.view(-1, 1, 1) * p
            r = r - alpha.view(-1, 1, 1) * ap
            active = active & (r.flatten(1).norm(dim=1) > tol * b_norm)
            if not bool(active.any()):
                break
            pz = inv_diag * r
            rz_new = (r * pz).flatten(1).sum(1)
            beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            p = pz + beta.view(-1, 1, 1) * p
            rz = rz_new
        out[solve] = torch.where(u > 0, z, x_img)
    return out.reshape(n, c, h, w).to(images.dtype)


def noisy_linear_impute(
    images: torch.Tensor,
    remove: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputer: :func:`linear_impute` plus N(0, ``noise``^2) on removed pixels.

    ``noise`` is in image units (ROAD used 0.01 on images scaled to [0, 1]). ``generator``
    makes the noise reproducible (it must live on ``images.device``).
    """
    filled = linear_impute(images, remove, tol=tol, max_iter=max_iter)
    if noise > 0:
        eps = torch.randn(images.shape, generator=generator, device=images.device, dtype=filled.dtype)
        filled = torch.where(remove, filled + noise * eps, filled)
    return filled
