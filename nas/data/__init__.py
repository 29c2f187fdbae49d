"""Datasets held in memory as one uint8 tensor, seeded splits, batched augmentation on the device."""
from .datasets import DATASETS, DatasetInfo, ImageData, load_dataset
from .pipeline import augment, cutout, iterate_batches

__all__ = ["DATASETS", "DatasetInfo", "ImageData", "load_dataset", "augment", "cutout", "iterate_batches"]
