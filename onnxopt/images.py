"""Image folders as data: decode with Pillow, preprocess to the model's input layout.

An image folder holds images directly (no labels) or in class subfolders (labels): the label of
a subfolder is its line number (from 0) in a ``labels.txt`` next to the subfolders, or its name
when the names are integers. Images are read in order of file name.

``ImagePreprocess`` turns one image into one sample, in this order:

1. decode, convert to RGB (or to 8-bit grayscale ``L`` for one-channel models);
2. resize: ``resize=256`` scales the short side to 256 (long side ``int(256 * long / short)``),
   ``resize=224x200`` resizes to exactly height 224, width 200; Pillow's ``resample`` filter;
3. centre crop ``crop=224`` or ``crop=HxW`` (top offset ``round((H - h) / 2)``, as torchvision);
4. ``x = (pixels * scale - mean) / std`` in float32, ``mean``/``std`` per channel in the model's
   channel order (after ``order=BGR`` flips the channels) or one value for all;
5. cast to the model's dtype (integer dtypes round and clip), lay out as NCHW, NHWC or NHW.

Defaults come from the model input: layout and channels from its shape (``[N, 3|1, H, W]`` is
NCHW, ``[N, H, W, 3|1]`` NHWC, rank 3 is NHW grayscale), an exact resize to its ``H x W`` when those
are fixed and neither ``resize`` nor ``crop`` is given, its dtype, and ``scale`` 1/255 for float
inputs (1 for integer inputs). ``mean``/``std`` need an explicit ``scale``: it decides their units
(pixels 0–255 with ``scale=1``, [0, 1] with ``scale=1/255``), and a guess would feed the model
near-constant images. Each source's description lists the values used and which came from the
model. The compact form for the command line is
``resize=256,crop=224,scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,order=RGB,layout=NCHW``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from onnxopt.data_source import Batch, DataSource, InputSpec, shape_text
from onnxopt.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})
LABELS_FILE = "labels.txt"
_ORDERS = ("RGB", "BGR")
_LAYOUTS = ("NCHW", "NHWC", "NHW")
_RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos")

Size = tuple[int, int]


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes one model input sample; ``None`` fields are taken from the model."""

    #: an int scales the short side to it; (height, width) resizes exactly
    resize: int | Size | None = None
    #: centre crop to (height, width); an int crops a square
    crop: int | Size | None = None
    #: pixel multiplier before mean/std (None: 1/255 for float inputs, 1 for integer inputs; must be
    #: given with mean/std, whose units it decides)
    scale: float | None = None
    #: per-channel values (None: 0 and 1, i.e. none)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    order: str = "RGB"
    layout: str | None = None
    grayscale: bool | None = None
    dtype: str | None = None
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("resize", "crop", "mean", "std"):  # lists from Python callers become tuples
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("resize", "crop"):
            value = getattr(self, name)
            sizes = (value,) if isinstance(value, int) else (value or ())
            if any(s < 1 for s in sizes) or (isinstance(value, tuple) and len(value) != 2):
                raise DataError(f"preprocess {name}={value}: expected a positive size N or HxW")
        if self.order not in _ORDERS:
            raise DataError(f"preprocess order={self.order}: expected one of {', '.join(_ORDERS)}")
        if self.layout is not None and self.layout not in _LAYOUTS:
            raise DataError(f"preprocess layout={self.layout}: expected one of {', '.join(_LAYOUTS)}")
        if self.resample not in _RESAMPLE:
            raise DataError(f"preprocess resample={self.resample}: expected one of {', '.join(_RESAMPLE)}")
        if self.mean == () or self.std == () or any(s == 0 for s in self.std or ()):
            raise DataError(f"preprocess mean={self.mean} std={self.std}: need at least one value each, std not 0")

    @classmethod
    def parse(cls, text: str) -> ImagePreprocess:
        """From ``key=value,...`` (keys are the field names; sizes ``N`` or ``HxW``, lists ``a:b:c``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in fields:
                raise DataError(f"preprocess '{item}': expected key=value with key one of {', '.join(sorted(fields))}")
            try:
                values[key] = _parse_value(key, value)
            except (ValueError, TypeError):
                raise DataError(f"preprocess '{item}': cannot read the value {value!r}") from None
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value == f.default:
                continue
            if isinstance(value, tuple) and f.name in ("resize", "crop"):
                value = f"{value[0]}x{value[1]}"
            elif isinstance(value, tuple):
                value = ":".join(repr(v) for v in value)
            parts.append(f"{f.name}={value}")
        return ",".join(parts)

    def for_input(self, spec: InputSpec) -> ImagePreprocess:
        """This preprocessing with every ``None`` field taken from ``spec``, checked against it."""
        where = f"input '{spec.name}' {shape_text(spec.shape)}"
        rank = len(spec.shape)
        if rank not in (3, 4):
            raise DataError(f"image folders feed rank-4 (NCHW/NHWC) or rank-3 (NHW) inputs; {where} has rank {rank}")
        layout = self.layout or ("NHW" if rank == 3 else "NHWC" if _is_channels(spec.shape[3])
                                 and not _is_channels(spec.shape[1]) else "NCHW")
        if len(layout) != rank:
            raise DataError(f"preprocess layout={layout} does not fit {where}")
        dims = dict(zip(layout, spec.shape))
        if "C" not in dims:
            channels = 1
        elif isinstance(dims["C"], int):
            channels = dims["C"]
        else:
            channels = 1 if self.grayscale else 3
        if channels not in (1, 3):
            raise DataError(f"{where} has {channels} channels in layout {layout}; images give 1 (grayscale) or 3")
        if self.grayscale is not None and self.grayscale != (channels == 1):
            raise DataError(f"preprocess grayscale={self.grayscale} does not fit {where} ({channels} channel(s))")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise DataError(f"preprocess {name} has {len(values)} values; {where} has {channels} channel(s)")
        dtype = spec.dtype
        floating = np.issubdtype(dtype, np.floating)
        if self.scale is None and (self.mean is not None or self.std is not None):
            given = ",".join(f"{k}={':'.join(f'{v:g}' for v in vs)}" for k, vs in (("mean", self.mean), ("std", self.std))
                             if vs is not None)
            raise DataError(f"preprocess {given} without scale: for {where} the default scale is "
                            f"{'1/255 (mean/std in [0, 1] units)' if floating else '1 (mean/std in pixel units 0-255)'}; "
                            "say which units mean/std are in: scale=1 for pixel values 0-255, scale=1/255 for [0, 1]")
        if self.dtype is not None and np.dtype(self.dtype) != dtype:
            raise DataError(f"preprocess dtype={self.dtype} does not fit {where}, which is {dtype}")
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise DataError(f"image folders feed float or integer inputs; {where} is {dtype}")
        model_hw = tuple(d if isinstance(d, int) and d > 0 else None for d in (dims["H"], dims["W"]))
        resize = self.resize
        if resize is None and self.crop is None and None not in model_hw:
            resize = model_hw  # type: ignore[assignment]
        out = _pair(self.crop) if self.crop is not None else resize if isinstance(resize, tuple) else None
        if out is not None and any(m is not None and m != o for m, o in zip(model_hw, out)):
            raise DataError(f"preprocess makes {out[0]}x{out[1]} images; {where} wants "
                            f"{model_hw[0] or '?'}x{model_hw[1] or '?'} (set resize= or crop=)")
        scale = self.scale if self.scale is not None else (1 / 255 if floating else 1.0)
        return dataclasses.replace(self, resize=resize, crop=None if self.crop is None else _pair(self.crop),
                                   scale=scale, layout=layout, grayscale=channels == 1, dtype=dtype.name,
                                   mean=self.mean or (0.0,), std=self.std or (1.0,))

    def load(self, path: Path) -> np.ndarray:
        """One sample (no batch axis) from an image file; needs a spec from ``for_input``."""
        from PIL import Image

        if self.layout is None or self.grayscale is None or self.dtype is None or self.scale is None \
                or self.mean is None or self.std is None:
            raise DataError("preprocess: call for_input(spec) first so layout, channels, dtype and scale are known")
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.grayscale else "RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
        if self.resize is not None:
            image = image.resize(_resized(image.size, self.resize), _resample_filter(self.resample))
        if self.crop is not None:
            image = _centre_crop(image, _pair(self.crop), path)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels
        if self.order == "BGR":
            pixels = pixels[:, :, ::-1]
        x = (pixels * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        dtype = np.dtype(self.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        x = x.astype(dtype)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        elif self.layout == "NHW":
            x = x[:, :, 0]
        return np.ascontiguousarray(x)


def _parse_value(key: str, text: str) -> object:
    if key in ("resize", "crop"):
        h, sep, w = text.lower().partition("x")
        return (int(h), int(w)) if sep else int(h)
    if key == "scale":
        num, sep, den = text.partition("/")
        return float(num) / float(den) if sep else float(num)
    if key in ("mean", "std"):
        return tuple(float(v) for v in text.split(":"))
    if key == "grayscale":
        flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if text.lower() not in flags:
            raise ValueError(text)
        return flags[text.lower()]
    if key == "dtype":
        return np.dtype(text).name
    if key == "resample":
        return text.lower()
    return text.upper()


def _pair(size: int | Size) -> Size:
    return (size, size) if isinstance(size, int) else size


def _is_channels(dim: int | str | None) -> bool:
    return dim in (1, 3)


def _resized(size: tuple[int, int], resize: int | Size) -> tuple[int, int]:
    """Pillow (width, height) after ``resize`` of an image of Pillow ``size`` (width, height)."""
    w, h = size
    if isinstance(resize, tuple):
        return resize[1], resize[0]
    if w <= h:
        return resize, int(resize * h / w)
    return int(resize * w / h), resize


def _resample_filter(name: str) -> int:
    from PIL import Image

    return {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[name]


def _centre_crop(image: PILImage, crop: Size, path: Path) -> PILImage:
    w, h = image.size
    ch, cw = crop
    if ch > h or cw > w:
        raise DataError(f"{path}: image is {h}x{w} after resizing, smaller than the crop {ch}x{cw} (set resize=)")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


class ImageFolderSource(DataSource):
    """Images, one sample each, preprocessed for a single-input model; optional class labels."""

    def __init__(self, files: list[Path], labels: list[int] | None, specs: list[InputSpec],
                 preprocess: ImagePreprocess | None, name: str) -> None:
        super().__init__(specs)
        if len(specs) != 1:
            raise DataError(f"image folders feed single-input models; this model has inputs "
                            f"{', '.join(s.name for s in specs)}")
        self.spec = specs[0]
        given = preprocess or ImagePreprocess()
        self.preprocess = given.for_input(self.spec)
        self.files = files
        self.labels = labels
        taken = ", ".join(f.name for f in dataclasses.fields(given)
                          if getattr(given, f.name) is None and getattr(self.preprocess, f.name) is not None)
        self.description = f"{name} ({len(files)} images, {self.preprocess}; defaults used: {taken or 'none'})"
        logger.info("%s: image preprocessing %s (defaults used: %s)", name, self.preprocess, taken or "none")

    @property
    def num_samples(self) -> int:
        return len(self.files)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def _chunks(self) -> Iterator[Batch]:
        for i, path in enumerate(self.files):
            labels = None if self.labels is None else np.array([self.labels[i]], dtype=np.int64)
            yield Batch({self.spec.name: self.preprocess.load(path)[np.newaxis]}, labels)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def image_folder(path: Path) -> tuple[list[Path], list[int] | None]:
    """The image files under ``path`` and their labels (``None`` without class subfolders)."""
    top = _images(path)
    classes = {d.name: found for d in sorted(path.iterdir())
               if d.is_dir() and not d.name.startswith(".") and (found := _images(d))}
    if top and classes:
        raise DataError(f"{path}: images both at the top level and in subfolders {', '.join(list(classes)[:3])}; "
                        "put all of them in class subfolders or none")
    if not classes:
        return top, None
    files = [f for found in classes.values() for f in found]
    labels_txt = path / LABELS_FILE
    if labels_txt.is_file():
        names = [line.strip() for line in labels_txt.read_text().splitlines() if line.strip()]
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise DataError(f"{labels_txt}: subfolder(s) {', '.join(unknown[:3])} are not listed "
                            "(one class name a line)")
    elif all(name.isdigit() for name in classes):
        index = {name: int(name) for name in classes}
    else:
        logger.warning("%s: class subfolders are not integers and there is no %s; reading the images without labels",
                       path, LABELS_FILE)
        return files, None
    return files, [index[name] for name, found in classes.items() for _ in found]


def open_image_folder(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None) -> DataSource | None:
    if not path.is_dir():
        return None
    files, labels = image_folder(path)
    return ImageFolderSource(files, labels, specs, preprocess, path.name) if files else None
