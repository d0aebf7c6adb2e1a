"""Exports of a run directory for the tools Cell Painting users already have.

- :func:`export_ome_zarr` — images, counterfactuals, attribution maps and DAC masks as OME-Zarr
  images with named channels (``<channel> · <method>``) and the source's pixel size (napari).
- :func:`export_anndata` — per-image and per-well results as AnnData (``.h5ad`` / AnnData-Zarr;
  obs = ``Metadata_*``, var = channel x method x quantity).

Both read the run through :class:`chanstat.rundir.RunDirectory` only (no torch).
"""

from chanstat.export.ome_zarr import channel_layers, export_ome_zarr
from chanstat.export.tables import export_anndata, image_table, long_results, well_table

#: ``chanstat export --to`` names -> functions
EXPORTERS = {"ome-zarr": export_ome_zarr, "anndata": export_anndata}

__all__ = [
    "EXPORTERS",
    "channel_layers",
    "export_anndata",
    "export_ome_zarr",
    "image_table",
    "long_results",
    "well_table",
]
