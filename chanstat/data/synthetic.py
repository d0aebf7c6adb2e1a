"""Procedural Cell Painting-like images with a planted phenotype in one channel.

Every tile holds a few cells drawn as ellipses. Each stain has its own structure:
DNA fills the nucleus (with chromatin spots), ER is a reticular network densest around the
nucleus, RNA shows nucleoli and faint cytoplasm, AGP outlines the membrane with actin fibres,
and Mito is a tubular network in the cytoplasm. The classes differ by one *phenotype* that
touches one channel only (e.g. Mito fragmentation: tubules break into puncta). Because the
images are procedural, the same cells can be rendered in the other class: that rendering is
the oracle counterfactual, and the pixels where the two renderings differ are the
ground-truth signal mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

CELL_PAINTING_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


@dataclass(frozen=True)
class Phenotype:
    """A class difference planted in one channel.

    ``level(effect_size)`` is the treated class's strength in [0, 1]; control is 0.
    """

    name: str
    channel: str
    description: str


PHENOTYPES: dict[str, Phenotype] = {
    p.name: p
    for p in (
        Phenotype("mito_fragmentation", "Mito", "mitochondrial tubules break into puncta"),
        Phenotype("er_intensity", "ER", "ER network brighter (x (1 + 0.5 * effect))"),
        Phenotype("nuclear_size", "DNA", "nuclei larger (radius x (1 + 0.25 * effect)) in the DNA stain"),
        Phenotype("rna_nucleoli", "RNA", "more and brighter nucleoli"),
        Phenotype("agp_intensity", "AGP", "membrane and actin brighter (x (1 + 0.5 * effect))"),
    )
}


def _well_names(n: int) -> list[str]:
    rows = "BCDEFGHIJKLMNO"
    return [f"{rows[i // 22]}{i % 22 + 2:02d}" for i in range(n)]


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance band-limited noise (difference of Gaussians)."""
    white = rng.standard_normal(shape)
    band = ndi.gaussian_filter(white, sigma, mode="wrap") - ndi.gaussian_filter(white, 2.5 * sigma, mode="wrap")
    return band / (band.std() + 1e-8)


def _ridges(field: np.ndarray, width: float) -> np.ndarray:
    """Thin line network along the zero crossings of a noise field."""
    return np.exp(-((field / width) ** 2))


def _spots(shape, centres, sigma, amplitude) -> np.ndarray:
    out = np.zeros(shape)
    if len(centres) == 0:
        return out
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for (cy, cx), amp in zip(centres, np.broadcast_to(amplitude, (len(centres),))):
        out += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return out


@dataclass
class _Cell:
    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    nucleus_ratio: float


def _elliptic_distance(yy, xx, cell: _Cell, scale: float = 1.0) -> np.ndarray:
    """Normalised distance to the cell centre (1 on the ellipse boundary of radius*scale)."""
    dy, dx = yy - cell.cy, xx - cell.cx
    ca, sa = np.cos(cell.angle), np.sin(cell.angle)
    u = (dx * ca + dy * sa) / (cell.radius * scale * cell.aspect)
    v = (-dx * sa + dy * ca) / (cell.radius * scale / cell.aspect)
    return np.sqrt(u**2 + v**2)


def _place_cells(rng: np.random.Generator, size: int, n_cells: int) -> list[_Cell]:
    cells: list[_Cell] = []
    for _ in range(n_cells * 30):
        if len(cells) == n_cells:
            break
        radius = rng.uniform(0.15, 0.19) * size
        cy, cx = rng.uniform(0.12 * size, 0.88 * size, size=2)
        if all(np.hypot(cy - c.cy, cx - c.cx) > 1.3 * max(radius, c.radius) for c in cells):
            cells.append(_Cell(cy, cx, radius, rng.uniform(1.0, 1.25), rng.uniform(0, np.pi), rng.uniform(0.42, 0.5)))
    return cells


def _render_tile(
    rng: np.random.Generator,
    size: int,
    n_cells: int,
    channels: Sequence[str],
    phenotype: Phenotype,
    levels: Sequence[float],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Render one tile at each phenotype level in ``levels`` (same cells, same noise).

    Returns the clean images (one (C, H, W) array per level), nuclei labels and cell labels.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cells = _place_cells(rng, size, n_cells)
    shape = (size, size)
    # Cell territories: each pixel belongs to the cell with the smallest normalised distance <= 1.
    dists = np.stack([_elliptic_distance(yy, xx, c) for c in cells]) if cells else np.full((1,) + shape, np.inf)
    owner = np.argmin(dists, axis=0)
    dmin = np.min(dists, axis=0)
    cell_labels = np.where(dmin <= 1.0, owner + 1, 0).astype(np.int32)
    nuclei_labels = np.zeros(shape, np.int32)

    er_field = _band_noise(rng, shape, 1.6)
    mito_field = _band_noise(rng, shape, 1.3)
    actin_field = _band_noise(rng, shape, 3.0)
    chromatin = _band_noise(rng, shape, 1.0)

    base = {ch: np.zeros(shape) for ch in ("DNA", "ER", "RNA", "AGP", "Mito")}
    mito_tubes = np.zeros(shape)
    mito_puncta = np.zeros(shape)
    er_net = np.zeros(shape)
    agp = np.zeros(shape)
    nucleoli_extra = np.zeros(shape)
    dna_big = np.zeros(shape)
    for k, cell in enumerate(cells, start=1):
        own = cell_labels == k
        d_cell = _elliptic_distance(yy, xx, cell)
        d_nuc = _elliptic_distance(yy, xx, cell, cell.nucleus_ratio)
        nucleus = own & (d_nuc <= 1.0)
        nuclei_labels[nucleus] = k
        cytoplasm = own & ~nucleus
        brightness = rng.uniform(0.8, 1.2)
        # DNA: dome-shaped nucleus with chromatin texture.
        dna = brightness * 0.75 * (1 - 0.35 * d_nuc**2) * (1 + 0.15 * chromatin)
        base["DNA"] += np.where(nucleus, dna, 0.0)
        d_big = _elliptic_distance(yy, xx, cell, cell.nucleus_ratio * 1.25)
        dna_big += np.where(
            own & (d_big <= 1.0), brightness * 0.75 * (1 - 0.35 * d_big**2) * (1 + 0.15 * chromatin), 0.0
        )
        # ER: reticular network, densest around the nucleus.
        er_net += np.where(
            cytoplasm, brightness * 0.6 * _ridges(er_field, 0.45) * np.exp(-1.5 * (d_cell - cell.nucleus_ratio)), 0.0
        )
        # RNA: nucleoli in the nucleus and faint cytoplasm.
        n_nucleoli = rng.integers(2, 4)
        ang = rng.uniform(0, 2 * np.pi, n_nucleoli)
        rad = rng.uniform(0, 0.5, n_nucleoli) * cell.radius * cell.nucleus_ratio
        centres = np.c_[cell.cy + rad * np.sin(ang), cell.cx + rad * np.cos(ang)]
        base["RNA"] += np.where(nucleus, _spots(shape, centres, 1.2, 0.7 * brightness), 0.0)
        base["RNA"] += np.where(cytoplasm, 0.18 * brightness * (1.2 - d_cell), 0.0)
        ang2 = rng.uniform(0, 2 * np.pi, 3)
        rad2 = rng.uniform(0, 0.6, 3) * cell.radius * cell.nucleus_ratio
        extra = np.c_[cell.cy + rad2 * np.sin(ang2), cell.cx + rad2 * np.cos(ang2)]
        nucleoli_extra += np.where(nucleus, _spots(shape, extra, 1.2, 0.7 * brightness), 0.0)
        # AGP: membrane ring plus actin fibres.
        ring = np.exp(-(((d_cell - 0.95) / 0.09) ** 2))
        agp += np.where(own, brightness * (0.6 * ring + 0.25 * _ridges(actin_field, 0.35)), 0.0)
        # Mito: tubular network in the cytoplasm; the fragmented version is puncta along it.
        tubes = np.where(cytoplasm, brightness * 0.8 * _ridges(mito_field, 0.4) * (1.15 - 0.6 * d_cell), 0.0)
        tubes[tubes < 0.08] = 0.0
        mito_tubes += tubes
        on_tube = np.argwhere(tubes > 0.45)
        if len(on_tube):
            n_puncta = max(3, len(on_tube) // 12)
            pick = on_tube[rng.choice(len(on_tube), size=min(n_puncta, len(on_tube)), replace=False)]
            dots = _spots(shape, pick.astype(float), 0.9, 1.0) * cytoplasm
            dots[dots < 0.05] = 0.0
            if dots.sum() > 0:
                mito_puncta += dots * (tubes.sum() / dots.sum())
    base["ER"] = er_net
    base["AGP"] = agp

    renders = []
    for level in levels:
        planes = dict(base)
        if phenotype.name == "mito_fragmentation":
            planes["Mito"] = (1 - level) * mito_tubes + level * mito_puncta
        else:
            planes["Mito"] = mito_tubes
        if phenotype.name == "er_intensity":
            planes["ER"] = er_net * (1 + level)
        if phenotype.name == "agp_intensity":
            planes["AGP"] = agp * (1 + level)
        if phenotype.name == "rna_nucleoli":
            planes["RNA"] = base["RNA"] + level * nucleoli_extra
        if phenotype.name == "nuclear_size" and level > 0:
            planes["DNA"] = (1 - level) * base["DNA"] + level * dna_big
        renders.append(np.stack([planes[ch] for ch in channels]))
    return renders, nuclei_labels, cell_labels


def synthetic(
    n_plates: int = 2,
    wells_per_class: int = 4,
    sites_per_well: int = 4,
    size: int = 64,
    channels: Sequence[str] = CELL_PAINTING_CHANNELS,
    phenotype: str = "mito_fragmentation",
    effect_size: float = 1.0,
    nuisance: bool = True,
    cells_per_tile: float = 3.0,
    noise: float = 0.02,
    classes: Sequence[str] = ("control", "treated"),
    seed: int = 0,
    progress: bool = False,
):
    """Generate a synthetic Cell Painting screen with a planted phenotype.

    Parameters
    ----------
    n_plates : plates; each holds ``wells_per_class`` wells of every class.
    wells_per_class : wells per class and plate (the unit of replication).
    sites_per_well : tiles (fields) per well.
    size : tile height and width in pixels.
    channels : stains to render, any subset/order of ``DNA, ER, RNA, AGP, Mito``.
    phenotype : key of :data:`PHENOTYPES`; decides the channel that differs.
    effect_size : strength of the phenotype (>= 0). 0 is a true null: the classes are
        identical in distribution. For ``mito_fragmentation`` the treated class has a
        fraction ``min(1, 0.6 * effect_size)`` of the Mito signal as puncta; for intensity
        phenotypes the channel is scaled by ``1 + 0.5 * effect_size``.
    nuisance : plate- and well-level variation of channel intensities and cell density.
    cells_per_tile : mean number of cells per tile (Poisson, at least one).
    noise : standard deviation of additive Gaussian camera noise.
    classes : class names; the first is the control (phenotype level 0), every further
        class gets the phenotype at an increasing strength.
    seed : makes the data set reproducible.

    Returns
    -------
    ImageSet
        ``images`` (N, C, size, size) float32 in [0, 1]; ``counterfactuals`` are the same
        cells rendered at the phenotype level of the counterfactual class (the next class,
        cyclically); ``signal_masks`` are True where image and counterfactual differ (planted
        channel only); ``objects`` holds ``nuclei`` and ``cells`` label images; ``meta`` has
        plate, well, site, class, counterfactual class and cell count.
    """
    import torch
    from tqdm.auto import tqdm

    from chanstat.data.imageset import ImageSet

    if phenotype not in PHENOTYPES:
        raise ValueError(f"unknown phenotype {phenotype!r}; known: {sorted(PHENOTYPES)}")
    if effect_size < 0:
        raise ValueError(f"effect_size must be >= 0; got {effect_size}")
    channels = [str(c) for c in channels]
    unknown = [c for c in channels if c not in CELL_PAINTING_CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel names {unknown}; synthetic renders {list(CELL_PAINTING_CHANNELS)}")
    pheno = PHENOTYPES[phenotype]
    if pheno.channel not in channels:
        raise ValueError(f"phenotype {phenotype!r} acts on {pheno.channel}, which is not among channels {channels}")
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    if min(n_plates, wells_per_class, sites_per_well) < 1 or size < 16:
        raise ValueError("n_plates, wells_per_class and sites_per_well must be >= 1 and size >= 16")

    strength = min(1.0, 0.6 * effect_size) if phenotype in ("mito_fragmentation", "nuclear_size") else 0.5 * effect_size
    n_classes = len(classes)
    levels = [strength * k / (n_classes - 1) for k in range(n_classes)]
    rng = np.random.default_rng(seed)
    n_ch = len(channels)
    wells = _well_names(n_classes * wells_per_class)
    images, cfs, labels, cf_labels, nuclei, cells_lab, rows = [], [], [], [], [], [], []
    total = n_plates * n_classes * wells_per_class * sites_per_well
    bar = tqdm(total=total, desc="synthetic tiles", disable=not progress)
    for p in range(n_plates):
        plate = f"P{p + 1}"
        plate_gain = np.exp(rng.normal(0, 0.15, n_ch)) if nuisance else np.ones(n_ch)
        well_order = rng.permutation(len(wells))  # classes are not laid out in blocks
        for w_idx, well_pos in enumerate(well_order):
            well = wells[well_pos]
            label = w_idx % n_classes
            cf_label = (label + 1) % n_classes
            well_gain = plate_gain * (np.exp(rng.normal(0, 0.12, n_ch)) if nuisance else 1.0)
            density = cells_per_tile * (np.exp(rng.normal(0, 0.25)) if nuisance else 1.0)
            for site in range(1, sites_per_well + 1):
                n_cells = max(1, int(rng.poisson(density)))
                (real, cf), nuc, cel = _render_tile(
                    rng, size, n_cells, channels, pheno, [levels[label], levels[cf_label]]
                )
                camera = rng.normal(0, noise, real.shape)
                background = 0.03
                finish = lambda x, gain=well_gain, bg=background, cam=camera: np.clip(  # noqa: E731
                    ndi.gaussian_filter(x, (0, 0.6, 0.6)) * gain[:, None, None] + bg + cam, 0.0, 1.0
                ).astype(np.float32)
                images.append(finish(real))
                cfs.append(finish(cf))
                labels.append(label)
                cf_labels.append(cf_label)
                nuclei.append(nuc)
                cells_lab.append(cel)
                rows.append(
                    dict(
                        Metadata_Plate=plate,
                        Metadata_Well=well,
                        Metadata_Site=site,
                        Metadata_Class=classes[label],
                        Metadata_Counterfactual_Class=classes[cf_label],
                        Metadata_CellCount=int(nuc.max()),
                    )
                )
                bar.update()
    bar.close()
    images_arr = np.stack(images)
    cf_arr = np.stack(cfs)
    signal = np.zeros(images_arr.shape, bool)
    k = channels.index(pheno.channel)
    signal[:, k] = images_arr[:, k] != cf_arr[:, k]
    meta = pd.DataFrame(rows)
    meta.attrs["phenotype"] = phenotype
    meta.attrs["planted_channel"] = pheno.channel
    return ImageSet(
        images=torch.from_numpy(images_arr),
        channels=channels,
        labels=torch.as_tensor(np.asarray(labels)),
        classes=list(classes),
        meta=meta,
        counterfactuals=torch.from_numpy(cf_arr),
        counterfactual_target=torch.as_tensor(np.asarray(cf_labels)),
        signal_masks=torch.from_numpy(signal),
        objects={"nuclei": np.stack(nuclei), "cells": np.stack(cells_lab)},
    )
