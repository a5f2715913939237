"""The zoo's metrics: each compares an optimized model's outputs on the held-out set with the float32
model's (and with the labels where there are some), from outputs the bench computed itself.

Outputs come as a list of per-batch output dicts (output name -> array), so models whose batch is
fixed at 1 (ddddocr) or whose output layout differs from the declared one work the same way.
A metric returns ``Score``: the float32 value, the optimized value, and what the number is.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from bench.zoo_data import ctc_decode

logger = logging.getLogger(__name__)

Outputs = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class Score:
    name: str  # e.g. "exact-string accuracy", "map IoU vs float32"
    reference: float  # the float32 model's value (1.0 for agreement metrics)
    optimized: float
    agreement: float  # top-1 / decoded-output agreement with float32 (fraction)

    @property
    def delta_points(self) -> float:
        return 100 * (self.optimized - self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta_points": self.delta_points}


def _cat(outputs: Outputs, name: str) -> np.ndarray:
    return np.concatenate([batch[name] for batch in outputs])


def _first(outputs: Outputs) -> str:
    return next(iter(outputs[0]))


def classifier(output: str | None = None) -> Callable[[Outputs, Outputs, np.ndarray | None, Any], Score]:
    """Top-1 accuracy against the labels (agreement with float32 also reported)."""
    def score(ref: Outputs, opt: Outputs, truth: np.ndarray | None, _: Any) -> Score:
        name = output or _first(ref)
        a, b = _cat(ref, name).argmax(-1), _cat(opt, name).argmax(-1)
        assert truth is not None
        return Score("accuracy", float((a == truth).mean()), float((b == truth).mean()), float((a == b).mean()))
    return score


def _strings_paddle(outputs: Outputs, charset: list[str]) -> list[str]:
    probs = _cat(outputs, _first(outputs))
    return [ctc_decode(row, charset) for row in probs.argmax(-1)]


def _strings_dddd(outputs: Outputs, charset: list[str]) -> list[str]:
    # common.onnx returns [T, 1, classes] per sample (its declared output shape [1, seqlen] is wrong)
    return [ctc_decode(batch[_first(outputs)][:, 0, :].argmax(-1), charset) for batch in outputs]


def recogniser(decode: Callable[[Outputs, list[str]], list[str]]
               ) -> Callable[[Outputs, Outputs, np.ndarray | None, Any], Score]:
    """Exact-string accuracy of the greedy CTC decoding against the rendered text."""
    def score(ref: Outputs, opt: Outputs, truth: np.ndarray | None, charset: Any) -> Score:
        a, b = decode(ref, charset), decode(opt, charset)
        assert truth is not None
        t = [str(s) for s in truth]
        return Score("exact-string accuracy", float(np.mean([x == y for x, y in zip(a, t)])),
                     float(np.mean([x == y for x, y in zip(b, t)])), float(np.mean([x == y for x, y in zip(a, b)])))
    return score


def map_iou(ref: Outputs, opt: Outputs, truth: np.ndarray | None, _: Any, threshold: float = 0.3) -> Score:
    """DBNet: mean over images of the IoU between the binarised (> 0.3, DB's default ``thresh``)
    probability maps of float32 and the optimized model."""
    name = _first(ref)
    a, b = _cat(ref, name) > threshold, _cat(opt, name) > threshold
    axes = tuple(range(1, a.ndim))
    union = (a | b).sum(axes)
    iou = np.where(union > 0, (a & b).sum(axes) / np.maximum(union, 1), 1.0)
    return Score("map IoU vs float32", 1.0, float(iou.mean()), float(iou.mean()))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if _iou(boxes[i], boxes[j]) <= iou_threshold]
    return keep


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def yolo_detections(output: np.ndarray, score_threshold: float = 0.2, nms_threshold: float = 0.45
                    ) -> list[tuple[int, np.ndarray]]:
    """nudenet/nudenet.py's post-processing of one image ``[4 + classes, anchors]``: class score >= 0.2,
    centre boxes to corners, NMS at IoU 0.45 (its cv2.dnn.NMSBoxes(…, 0.25, 0.45) call)."""
    rows = output.T
    scores = rows[:, 4:].max(1)
    keep = scores >= score_threshold
    rows, scores = rows[keep], scores[keep]
    boxes = np.c_[rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2,
                  rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2]
    classes = rows[:, 4:].argmax(1)
    return [(int(classes[i]), boxes[i]) for i in _nms(boxes, scores, nms_threshold)]


def detection_agreement(ref: Outputs, opt: Outputs, truth: np.ndarray | None, _: Any) -> Score:
    """F1 of the optimized model's detections against float32's, matched greedily at IoU >= 0.5 with
    the same class; images where neither finds anything count as agreeing."""
    name = _first(ref)
    a, b = _cat(ref, name), _cat(opt, name)
    matched = n_ref = n_opt = 0
    same_images = 0
    for x, y in zip(a, b):
        da, db = yolo_detections(x), yolo_detections(y)
        n_ref, n_opt = n_ref + len(da), n_opt + len(db)
        used: set[int] = set()
        hits = 0
        for cls, box in da:
            best = max(((j, _iou(box, other)) for j, (c, other) in enumerate(db) if c == cls and j not in used),
                       key=lambda t: t[1], default=(None, 0.0))
            if best[0] is not None and best[1] >= 0.5:
                used.add(best[0])
                hits += 1
        matched += hits
        same_images += int(hits == len(da) == len(db))
    f1 = 2 * matched / (n_ref + n_opt) if n_ref + n_opt else 1.0
    logger.info("detections: float32 %d, optimized %d, matched %d", n_ref, n_opt, matched)
    return Score(f"detection F1 vs float32 ({n_ref} float32 boxes)", 1.0, f1, same_images / len(a))


def embedding(output: str) -> Callable[[Outputs, Outputs, np.ndarray | None, Any], Score]:
    """Mean cosine similarity with float32's embedding; agreement = each sentence's nearest neighbour
    in the evaluation set is the same one under both models."""
    def score(ref: Outputs, opt: Outputs, truth: np.ndarray | None, _: Any) -> Score:
        a, b = _cat(ref, output), _cat(opt, output)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        cosine = float((a * b).sum(1).mean())
        sa, sb = a @ a.T, b @ b.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(sb, -np.inf)
        return Score("cosine vs float32", 1.0, cosine, float((sa.argmax(1) == sb.argmax(1)).mean()))
    return score


METRICS: dict[str, Callable[[Outputs, Outputs, np.ndarray | None, Any], Score]] = {
    "ppocrv5_rec": recogniser(_strings_paddle),
    "ppocrv6_rec_small": recogniser(_strings_paddle),
    "ddddocr_common": recogniser(_strings_dddd),
    "ppocrv5_det": map_iou,
    "ppocr_cls": classifier(),
    "orinet": classifier(),
    "mtcnn_onet": classifier("softmax_2"),
    "nudenet_320n": detection_agreement,
    "minilm_l3": embedding("461"),
}
