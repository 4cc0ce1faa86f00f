"""The residual blocks written out in plain NumPy, straight from the papers, as readable forward oracles.

He et al. (2015), "Deep Residual Learning": a block computes ``y = relu(F(x) + shortcut(x))`` where F is
conv-BN-ReLU-conv-BN (BasicBlock) or 1x1-3x3-1x1 convs each followed by BN (Bottleneck, the 3x3 carries
the stride as in torchvision v1.5). The shortcut is x itself, a 1x1 strided conv + BN ("option B"), or
for the CIFAR nets the parameter-free "option A": every stride-th pixel, zero channels appended.
He et al. (2016), "Identity Mappings": the pre-activation block is ``x + F(x)`` with F made of BN-ReLU-conv
units; nothing follows the add; a projection reads the pre-activated input ``relu(bn1(x))``.

Nothing here calls minires: parameters come in as a dict of NumPy arrays named as in the modules
(``conv1.weight``, ``bn1.running_mean``, ``downsample.0.weight`` ...). ``train=True`` normalises with the
batch's own mean and biased variance (what BatchNorm does in training); ``train=False`` with the running
statistics.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Cross-correlation, (N, C, H, W) * (O, C, k, k) -> (N, O, H', W'): a sum over the k*k kernel offsets
    of the shifted, strided input times that offset's (O, C) weight matrix."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - k) // stride + 1
    ow = (wd + 2 * padding - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]  # (N, C, oh, ow)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def batchnorm(x: np.ndarray, p: dict, name: str, train: bool) -> np.ndarray:
    """gamma * (x - mean) / sqrt(var + eps) + beta per channel; batch statistics in training."""
    if train:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    else:
        mean, var = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    shape = (1, -1, 1, 1)
    x_hat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS)
    return p[f"{name}.weight"].reshape(shape) * x_hat + p[f"{name}.bias"].reshape(shape)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def option_a(x: np.ndarray, out_planes: int, stride: int) -> np.ndarray:
    """Every stride-th pixel, then zero channels after the real ones: no parameters."""
    x = x[:, :, ::stride, ::stride]
    zeros = np.zeros((x.shape[0], out_planes - x.shape[1], x.shape[2], x.shape[3]))
    return np.concatenate([x, zeros], axis=1)


def projection(x: np.ndarray, p: dict, stride: int, train: bool, with_bn: bool = True) -> np.ndarray:
    """Option B: a strided 1x1 conv (+ BN, except in pre-activation nets)."""
    out = conv2d(x, p["downsample.0.weight"], stride)
    return batchnorm(out, p, "downsample.1", train) if with_bn else out


def basic_block(x: np.ndarray, p: dict, stride: int, shortcut, train: bool) -> np.ndarray:
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); ``shortcut`` None means plain (no skip)."""
    f = relu(batchnorm(conv2d(x, p["conv1.weight"], stride, 1), p, "bn1", train))
    f = batchnorm(conv2d(f, p["conv2.weight"], 1, 1), p, "bn2", train)
    return relu(f) if shortcut is None else relu(f + shortcut(x))


def bottleneck(x: np.ndarray, p: dict, stride: int, shortcut, train: bool) -> np.ndarray:
    """1x1 reduce, 3x3 (with the stride), 1x1 expand, each followed by BN; ReLU between and after the add."""
    f = relu(batchnorm(conv2d(x, p["conv1.weight"]), p, "bn1", train))
    f = relu(batchnorm(conv2d(f, p["conv2.weight"], stride, 1), p, "bn2", train))
    f = batchnorm(conv2d(f, p["conv3.weight"]), p, "bn3", train)
    return relu(f) if shortcut is None else relu(f + shortcut(x))


def preact_basic_block(x: np.ndarray, p: dict, stride: int, shortcut, train: bool) -> np.ndarray:
    """x + conv2(relu(bn2(conv1(relu(bn1(x)))))); the shortcut gets (x, relu(bn1(x)))."""
    pre = relu(batchnorm(x, p, "bn1", train))
    f = conv2d(relu(batchnorm(conv2d(pre, p["conv1.weight"], stride, 1), p, "bn2", train)), p["conv2.weight"], 1, 1)
    return f if shortcut is None else f + shortcut(x, pre)


def preact_bottleneck(x: np.ndarray, p: dict, stride: int, shortcut, train: bool) -> np.ndarray:
    """x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x))))))))); the shortcut gets (x, relu(bn1(x)))."""
    pre = relu(batchnorm(x, p, "bn1", train))
    f = conv2d(pre, p["conv1.weight"])
    f = conv2d(relu(batchnorm(f, p, "bn2", train)), p["conv2.weight"], stride, 1)
    f = conv2d(relu(batchnorm(f, p, "bn3", train)), p["conv3.weight"])
    return f if shortcut is None else f + shortcut(x, pre)
