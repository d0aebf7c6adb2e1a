"""Images, their metadata, readers and the synthetic Cell Painting generator."""

from chanstat.data.illumination import correct as correct_illumination
from chanstat.data.imageset import ImageSet
from chanstat.data.jump import read_jump
from chanstat.data.ome import plate_fields, read_ome_tiff, read_ome_zarr
from chanstat.data.readers import (
    from_arrays,
    loaddata_channels,
    read,
    read_loaddata,
    read_numpy,
    read_zarr,
    tile,
)
from chanstat.data.scaling import SCALINGS, rescale_percentiles, scale_images
from chanstat.data.synthetic import CELL_PAINTING_CHANNELS, PHENOTYPES, synthetic

__all__ = [
    "ImageSet",
    "synthetic",
    "CELL_PAINTING_CHANNELS",
    "PHENOTYPES",
    "read",
    "read_loaddata",
    "read_numpy",
    "read_zarr",
    "from_arrays",
    "tile",
    "rescale_percentiles",
    "loaddata_channels",
    "scale_images",
    "SCALINGS",
    "read_ome_zarr",
    "read_ome_tiff",
    "read_jump",
    "plate_fields",
    "correct_illumination",
]
