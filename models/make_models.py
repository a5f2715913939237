#!/usr/bin/env python3
"""Train and export the bundled real models of onnxopt (see models/README.md).

Produces, in --out (default: this file's folder):

  resnet_fmnist.onnx  + .calib.npz + .eval.npz   (Fashion-MNIST, BN kept, polarised gammas)
  vgg_digits.onnx     + .calib.npz + .eval.npz   (scikit-learn digits upsampled to 16x16)
  mlp_fmnist.onnx     + .calib.npz + .eval.npz   (Fashion-MNIST, MatMul+Add / Gemm)

Training needs torch (CPU) and scikit-learn; the ONNX graphs are written by hand
with onnx.helper from the trained parameters (no torch.onnx.export), so the
BatchNormalization nodes stay separate nodes and names are predictable.  The
artifacts themselves need only onnx / onnxruntime / numpy.

Everything is seeded; run with the same torch build (2.13.0+cpu) and thread
count (--threads, default 1) to get the same weights.
"""
from __future__ import annotations

import argparse
import gzip
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

SEED = 20240501
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17
PRODUCER = "onnxopt-models"
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
BN_EPS = 1e-5

# Polarisation regulariser (Zhuang et al. 2020, "Neuron-level structured pruning
# using polarization regularizer"): R(g) = sum_i t*|g_i| - |g_i - mean(g)| per BN.
POL_LAMBDA = 5e-4
POL_T = 1.2
GAMMA_INIT = 0.5


# --------------------------------------------------------------------------- data
def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fmnist():
    def prep(x):
        x = x.astype(np.float32) / 255.0
        return ((x - FMNIST_MEAN) / FMNIST_STD).astype(np.float32)[:, None, :, :]

    xtr = _read_idx(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))
    ytr = _read_idx(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz"))
    xte = _read_idx(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    yte = _read_idx(os.path.join(FMNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    return prep(xtr), ytr.astype(np.int64), prep(xte), yte.astype(np.int64)


def bilinear_upsample(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of [S,H,W] with half-pixel centres and edge clamping
    (same as torch interpolate(mode='bilinear', align_corners=False) and ONNX
    Resize linear/half_pixel for upscaling)."""
    s, h, w = x.shape

    def coords(n_out, n_in):
        c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        c = np.clip(c, 0.0, n_in - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo

    y0, y1, wy = coords(out_h, h)
    x0, x1, wx = coords(out_w, w)
    xd = x.astype(np.float64)
    top = xd[:, y0, :] * (1 - wy)[None, :, None] + xd[:, y1, :] * wy[None, :, None]
    out = top[:, :, x0] * (1 - wx)[None, None, :] + top[:, :, x1] * wx[None, None, :]
    return out.astype(np.float32)


def load_digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = bilinear_upsample(d.images / 16.0, 16, 16)[:, None, :, :]
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(y))
    n_hold = int(round(0.3 * len(y)))  # 539
    hold, train = perm[:n_hold], perm[n_hold:]
    calib, evl = hold[:128], hold[128:]
    return (x[train], y[train]), (x[calib], y[calib]), (x[evl], y[evl])


def split_fmnist_test(xte, yte, n_calib=256, n_eval=1000):
    perm = np.random.RandomState(SEED + 1).permutation(len(yte))
    c, e = perm[:n_calib], perm[n_calib:n_calib + n_eval]
    return (xte[c], yte[c]), (xte[e], yte[e])


# --------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Module()
            self.shortcut.conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            self.shortcut.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.shortcut is None else self.shortcut.bn(self.shortcut.conv(x))
        return F.relu(out + sc)


class Stem(nn.Module):
    def __init__(self, cout):
        super().__init__()
        self.conv = nn.Conv2d(1, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ResNetFM(nn.Module):
    # (channels, stride of first block, blocks) per stage; every stage starts with a
    # downsampling block (1x1 conv+BN projection), followed by an identity block.
    # Spatial: 28 (stem) -> 14 -> 7 -> 4.
    STAGES = [(16, 2, 2), (32, 2, 2), (64, 2, 2)]

    def __init__(self):
        super().__init__()
        self.stem = Stem(16)
        cin = 16
        for i, (c, s, n) in enumerate(self.STAGES, start=1):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, c, s if j == 0 else 1))
                cin = c
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, len(self.STAGES) + 1):
            x = getattr(self, f"layer{i}")(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class VGGDigits(nn.Module):
    # conv channels; "M" = MaxPool 2x2
    CFG = [16, 16, "M", 32, 32, "M"]

    def __init__(self):
        super().__init__()
        layers, cin = [], 1
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class MatMulLinear(nn.Module):
    """y = x @ W + b with W stored [in, out] (what MatMul+Add exporters emit)."""

    def __init__(self, fin, fout):
        super().__init__()
        lin = nn.Linear(fin, fout)  # default init
        self.weight = nn.Parameter(lin.weight.detach().t().contiguous())
        self.bias = nn.Parameter(lin.bias.detach().clone())

    def forward(self, x):
        return x @ self.weight + self.bias


class MLPFM(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = MatMulLinear(784, 256)
        self.fc2 = MatMulLinear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# --------------------------------------------------------------------------- training
def polarization_penalty(model):
    total = 0.0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            g = m.weight
            total = total + (POL_T * g.abs() - (g - g.mean()).abs()).sum()
    return total


def train(model, x, y, *, epochs, batch, opt, sched=None, polarize=False, log=""):
    g = torch.Generator().manual_seed(SEED + 7)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n = len(yt)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        tot_loss, correct, t0 = 0.0, 0, time.time()
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = xt[idx], yt[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            full = loss + POL_LAMBDA * polarization_penalty(model) if polarize else loss
            opt.zero_grad(set_to_none=True)
            full.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if polarize:
                with torch.no_grad():
                    for m in model.modules():
                        if isinstance(m, nn.BatchNorm2d):
                            m.weight.clamp_(0.0, 1.0)
            tot_loss += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        extra = ""
        if polarize:
            gam = torch.cat([m.weight.detach() for m in model.modules()
                             if isinstance(m, nn.BatchNorm2d)])
            extra = f" gammas<0.01: {int((gam < 0.01).sum())}/{gam.numel()}"
        print(f"  [{log}] epoch {ep + 1}/{epochs} loss {tot_loss / n:.4f} "
              f"train-acc {correct / n:.4f} ({time.time() - t0:.1f}s){extra}", flush=True)


@torch.no_grad()
def torch_predict(model, x, batch=1000):
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------- ONNX writing
class GraphBuilder:
    def __init__(self, sd):
        self.sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in sd.items()
                   if v.dtype.is_floating_point}
        self.nodes, self.inits, self.used = [], [], set()

    def init(self, name, arr=None):
        if name not in self.used:
            a = self.sd[name] if arr is None else arr
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a, np.float32), name))
            self.used.add(name)
        return name

    def node(self, op, inputs, name, out=None, **attrs):
        out = out or f"{name}_output"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, x, name, stride=1, pad=None, bias=False):
        w = self.sd[f"{name}.weight"]
        k = w.shape[2]
        pad = k // 2 if pad is None else pad
        ins = [x, self.init(f"{name}.weight")]
        if bias:
            ins.append(self.init(f"{name}.bias"))
        return self.node("Conv", ins, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, dilations=[1, 1], group=1)

    def bn(self, x, name):
        ins = [x] + [self.init(f"{name}.{p}") for p in
                     ("weight", "bias", "running_mean", "running_var")]
        return self.node("BatchNormalization", ins, name, epsilon=BN_EPS, momentum=0.9)

    def gemm(self, x, name, out=None):
        return self.node("Gemm", [x, self.init(f"{name}.weight"), self.init(f"{name}.bias")],
                         name, out=out, alpha=1.0, beta=1.0, transA=0, transB=1)

    def matmul_add(self, x, name):
        y = self.node("MatMul", [x, self.init(f"{name}.weight")], f"{name}.matmul")
        return self.node("Add", [y, self.init(f"{name}.bias")], f"{name}.add")

    def model(self, graph_name, in_shape, doc, meta):
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N"] + list(in_shape))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
        g = helper.make_graph(self.nodes, graph_name, [inp], [out], self.inits, doc_string=doc)
        m = helper.make_model(g, producer_name=PRODUCER, producer_version="1.0",
                              opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = IR_VERSION
        m.doc_string = doc
        helper.set_model_props(m, {k: str(v) for k, v in meta.items()})
        return m


def resnet_to_onnx(model, doc, meta):
    b = GraphBuilder(model.state_dict())
    x = b.conv("input", "stem.conv")
    x = b.bn(x, "stem.bn")
    x = b.node("Relu", [x], "stem.relu")
    for i, (c, s, n) in enumerate(ResNetFM.STAGES, start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            blk = getattr(model, f"layer{i}")[j]
            stride = blk.conv1.stride[0]
            y = b.conv(x, f"{p}.conv1", stride=stride)
            y = b.bn(y, f"{p}.bn1")
            y = b.node("Relu", [y], f"{p}.relu1")
            y = b.conv(y, f"{p}.conv2")
            y = b.bn(y, f"{p}.bn2")
            if blk.shortcut is not None:
                sc = b.conv(x, f"{p}.shortcut.conv", stride=stride, pad=0)
                sc = b.bn(sc, f"{p}.shortcut.bn")
            else:
                sc = x
            y = b.node("Add", [y, sc], f"{p}.add")
            x = b.node("Relu", [y], f"{p}.relu2")
    x = b.node("GlobalAveragePool", [x], "avgpool")
    x = b.node("Flatten", [x], "flatten", axis=1)
    b.gemm(x, "fc", out="logits")
    return b.model("resnet_fmnist", [1, 28, 28], doc, meta)


def vgg_to_onnx(model, doc, meta):
    b = GraphBuilder(model.state_dict())
    x = "input"
    for idx, layer in enumerate(model.features):
        name = f"features.{idx}"
        if isinstance(layer, nn.Conv2d):
            x = b.conv(x, name, bias=True)
        elif isinstance(layer, nn.ReLU):
            x = b.node("Relu", [x], name)
        elif isinstance(layer, nn.MaxPool2d):
            x = b.node("MaxPool", [x], name, kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
    x = b.node("Flatten", [x], "flatten", axis=1)
    x = b.gemm(x, "fc1")
    x = b.node("Relu", [x], "relu_fc1")
    b.gemm(x, "fc2", out="logits")
    return b.model("vgg_digits", [1, 16, 16], doc, meta)


def mlp_to_onnx(model, doc, meta):
    b = GraphBuilder(model.state_dict())
    x = b.node("Flatten", ["input"], "flatten", axis=1)
    x = b.matmul_add(x, "fc1")
    x = b.node("Relu", [x], "relu1")
    x = b.matmul_add(x, "fc2")
    x = b.node("Relu", [x], "relu2")
    b.gemm(x, "fc3", out="logits")
    return b.model("mlp_fmnist", [1, 28, 28], doc, meta)


# --------------------------------------------------------------------------- stats
def count_params(m: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in m.graph.initializer))


def count_macs(m: onnx.ModelProto) -> int:
    """MACs per sample: Conv Cout*Hout*Wout*(Cin/group)*kH*kW; Gemm/MatMul M*K*N."""
    inf = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    shapes = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1
                           for d in vi.type.tensor_type.shape.dim]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    macs = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]
            o = shapes[n.output[0]]
            macs += w[0] * o[2] * o[3] * w[1] * w[2] * w[3]
        elif n.op_type == "Gemm":
            a, bsh = shapes[n.input[0]], shapes[n.input[1]]
            ta = next((at.i for at in n.attribute if at.name == "transA"), 0)
            tb = next((at.i for at in n.attribute if at.name == "transB"), 0)
            mm, k = (a[1], a[0]) if ta else (a[0], a[1])
            nn_ = bsh[0] if tb else bsh[1]
            macs += mm * k * nn_
        elif n.op_type == "MatMul":
            a, bsh = shapes[n.input[0]], shapes[n.input[1]]
            macs += int(np.prod(a[:-1])) * a[-1] * bsh[-1]
    return int(macs)


# --------------------------------------------------------------------------- finish
def finish(name, tmodel, builder, doc, meta, calib, evl, out_dir, extra_eval=None):
    """Export, check, compare with torch, save data, report accuracy."""
    meta = dict(meta)
    tmp = builder(tmodel, doc, meta)
    meta["params"] = count_params(tmp)
    meta["macs_per_sample"] = count_macs(tmp)

    sess_model = tmp.SerializeToString()
    sess = ort.InferenceSession(sess_model, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": evl[0]})[0]
    acc = float((ort_logits.argmax(1) == evl[1]).mean())
    torch_logits = torch_predict(tmodel, evl[0])
    maxdiff = float(np.abs(ort_logits - torch_logits).max())
    assert maxdiff < 1e-4, f"{name}: onnxruntime vs torch max abs diff {maxdiff}"
    meta["eval_accuracy"] = f"{acc:.4f}"
    meta["eval_samples"] = len(evl[1])
    if extra_eval is not None:
        xs, ys, label = extra_eval
        lg = np.concatenate([sess.run(["logits"], {"input": xs[i:i + 1000]})[0]
                             for i in range(0, len(xs), 1000)])
        meta[label] = f"{float((lg.argmax(1) == ys).mean()):.4f}"

    m = builder(tmodel, doc, meta)
    onnx.checker.check_model(m, full_check=True)
    path = os.path.join(out_dir, f"{name}.onnx")
    onnx.save_model(m, path)
    onnx.checker.check_model(path, full_check=True)
    np.savez_compressed(os.path.join(out_dir, f"{name}.calib.npz"),
                        input=np.ascontiguousarray(calib[0], np.float32),
                        label=calib[1].astype(np.int64))
    np.savez_compressed(os.path.join(out_dir, f"{name}.eval.npz"),
                        input=np.ascontiguousarray(evl[0], np.float32),
                        label=evl[1].astype(np.int64))
    extra = f", {extra_eval[2]} {meta[extra_eval[2]]}" if extra_eval else ""
    print(f"{name}: onnxruntime accuracy {acc:.4f} on {len(evl[1])} eval samples{extra}; "
          f"ort-vs-torch max|diff| {maxdiff:.2e}; params {meta['params']}; "
          f"MACs/sample {meta['macs_per_sample']}", flush=True)
    return acc


def seed_all(offset):
    torch.manual_seed(SEED + offset)
    np.random.seed(SEED + offset)


def make_resnet(out_dir, epochs):
    xtr, ytr, xte, yte = load_fmnist()
    calib, evl = split_fmnist_test(xte, yte)
    seed_all(1)
    model = ResNetFM()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, GAMMA_INIT)
    bn_params = [p for n, p in model.named_parameters() if "bn" in n]
    other = [p for n, p in model.named_parameters() if "bn" not in n]
    opt = torch.optim.SGD([{"params": other, "weight_decay": 5e-4},
                           {"params": bn_params, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    batch = 128
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps,
                                                pct_start=0.15, anneal_strategy="cos")
    t0 = time.time()
    train(model, xtr, ytr, epochs=epochs, batch=batch, opt=opt, sched=sched,
          polarize=True, log="resnet_fmnist")
    dt = time.time() - t0
    gam = np.concatenate([m.weight.detach().numpy() for m in model.modules()
                          if isinstance(m, nn.BatchNorm2d)])
    near0 = int((gam < 1e-2).sum())
    print(f"  resnet gammas: {near0}/{gam.size} < 0.01, "
          f"{int((gam > 0.2).sum())} > 0.2", flush=True)
    doc = ("Small ResNet (stem + 3 stages x 2 basic blocks, 16/32/64 channels, 28->14->7->4) for "
           "Fashion-MNIST 28x28, BatchNormalization kept unfolded; trained with the "
           "polarisation regulariser on BN gammas (channel-pruning ready).")
    meta = {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist, MIT)",
            "preprocessing": f"pixel/255, (x-{FMNIST_MEAN})/{FMNIST_STD}, shape [N,1,28,28]",
            "training": f"{epochs} epochs SGD nesterov onecycle lr0.1 bs{batch} wd5e-4; "
                        f"polarisation lambda={POL_LAMBDA} t={POL_T} gamma_init={GAMMA_INIT}, "
                        "gamma clamped to [0,1]",
            "bn_gammas_below_0.01": f"{near0}/{gam.size}"}
    print(f"  resnet_fmnist trained in {dt:.0f}s", flush=True)
    return finish("resnet_fmnist", model, resnet_to_onnx, doc, meta, calib, evl, out_dir,
                  extra_eval=(xte, yte, "test10k_accuracy"))


def make_vgg(out_dir, epochs):
    (xtr, ytr), calib, evl = load_digits_split()
    seed_all(2)
    model = VGGDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * ((len(ytr) + 63) // 64))
    t0 = time.time()
    train(model, xtr, ytr, epochs=epochs, batch=64, opt=opt, sched=sched, log="vgg_digits")
    dt = time.time() - t0
    doc = ("Plain VGG-style CNN (Conv3x3+Relu x2, MaxPool, Conv3x3+Relu x2, MaxPool, "
           "Gemm+Relu, Gemm) on scikit-learn digits upsampled to 16x16.")
    meta = {"dataset": "scikit-learn load_digits (UCI optdigits, BSD-3-Clause via scikit-learn)",
            "preprocessing": "pixel/16, bilinear 8x8->16x16 (half-pixel centres), shape [N,1,16,16]",
            "training": f"{epochs} epochs Adam lr2e-3 cosine bs64 on {len(ytr)} samples"}
    print(f"  vgg_digits trained in {dt:.0f}s", flush=True)
    return finish("vgg_digits", model, vgg_to_onnx, doc, meta, calib, evl, out_dir)


def make_mlp(out_dir, epochs):
    xtr, ytr, xte, yte = load_fmnist()
    calib, evl = split_fmnist_test(xte, yte)
    seed_all(3)
    model = MLPFM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * ((len(ytr) + 127) // 128))
    t0 = time.time()
    train(model, xtr, ytr, epochs=epochs, batch=128, opt=opt, sched=sched, log="mlp_fmnist")
    dt = time.time() - t0
    doc = ("MLP on Fashion-MNIST: Flatten, MatMul+Add 784->256, Relu, MatMul+Add 256->128, "
           "Relu, Gemm 128->10.")
    meta = {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist, MIT)",
            "preprocessing": f"pixel/255, (x-{FMNIST_MEAN})/{FMNIST_STD}, shape [N,1,28,28]",
            "training": f"{epochs} epochs Adam lr1e-3 cosine bs128"}
    print(f"  mlp_fmnist trained in {dt:.0f}s", flush=True)
    return finish("mlp_fmnist", model, mlp_to_onnx, doc, meta, calib, evl, out_dir,
                  extra_eval=(xte, yte, "test10k_accuracy"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", choices=["resnet", "vgg", "mlp"], action="append")
    ap.add_argument("--resnet-epochs", type=int, default=5)
    ap.add_argument("--vgg-epochs", type=int, default=30)
    ap.add_argument("--mlp-epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: results depend on the thread "
                         "count, and 2 threads on a shared 2-core machine is much slower)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    todo = args.only or ["resnet", "vgg", "mlp"]
    t0 = time.time()
    accs = {}
    if "vgg" in todo:
        accs["vgg_digits"] = make_vgg(args.out, args.vgg_epochs)
    if "mlp" in todo:
        accs["mlp_fmnist"] = make_mlp(args.out, args.mlp_epochs)
    if "resnet" in todo:
        accs["resnet_fmnist"] = make_resnet(args.out, args.resnet_epochs)
    print("accuracies (onnxruntime, eval files):",
          ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    print(f"total time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
