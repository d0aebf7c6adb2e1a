"""Images, their metadata, readers and the synthetic Cell Painting generator."""
from chanstat.data.imageset import ImageSet
from chanstat.data.readers import (
    from_arrays,
    loaddata_channels,
    read,
    read_loaddata,
    read_numpy,
    read_zarr,
    rescale_percentiles,
    tile,
)
from chanstat.data.synthetic import CELL_PAINTING_CHANNELS, PHENOTYPES, synthetic

__all__ = [
    "ImageSet", "synthetic", "CELL_PAINTING_CHANNELS", "PHENOTYPES", "read", "read_loaddata", "read_numpy",
    "read_zarr", "from_arrays", "tile", "rescale_percentiles", "loaddata_channels",
]
