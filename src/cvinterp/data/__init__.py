"""One way to ask for a dataset by name: `load_images(name, split, ...)`.

Image datasets come back as `ImageData` (uint8 HWC arrays in memory for the small offline
sets; paper-scale sets stream through `torch.utils.data.Dataset`s instead).
"""

from cvinterp.data.images import (
    IMAGE_DATASETS,
    DataError,
    ImageData,
    load_images,
    photo_names,
    photos,
)

__all__ = ["IMAGE_DATASETS", "DataError", "ImageData", "load_images", "photo_names", "photos"]
