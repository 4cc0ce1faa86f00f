"""Batch transforms (data augmentation and normalisation), vectorised over the batch.

Every transform takes a **raw array** batch ``(N, C, H, W)`` (numpy on the CPU, cupy on the GPU, not a
Tensor) and returns a new array on the same device, computed with that array's module (``xp``): no
Python loop over images. Random transforms draw their random numbers on the host from a numpy
Generator and move them to the batch's device, so a seed gives the same augmentation on the CPU and the
GPU. The Generator is, in order of precedence: the ``rng`` passed to the call (the DataLoader passes
its per-epoch generator, which makes augmentation reproducible and resumable), the ``rng`` given to
the constructor (a Generator or an int seed), or minires' global generator (``mr.manual_seed``).

Each random transform splits into ``sample(n, height, width, rng)`` (host arrays of parameters) and
``apply(x, params)`` (deterministic), so a caller can reuse or inspect the exact parameters drawn.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from minires import backend
from minires import random as mr_random
from minires.ops.geometry import pair


def _make_rng(rng: np.random.Generator | int | None) -> np.random.Generator | None:
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(int(rng))


def _check_batch(name: str, x: Any) -> None:
    if getattr(x, "ndim", None) != 4:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{name}: expected a raw array batch (N, C, H, W), got {shape}")


class Transform:
    """Base of the batch transforms: ``t(x, rng=None) -> array``, x a raw array (N, C, H, W)."""

    def __init__(self, rng: np.random.Generator | int | None = None) -> None:
        self.rng = _make_rng(rng)

    def _generator(self, rng: np.random.Generator | None) -> np.random.Generator:
        if rng is not None:
            return rng
        if self.rng is not None:
            return self.rng
        return mr_random.generator()

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        raise NotImplementedError


class RandomCrop(Transform):
    """Pad each image with ``padding`` zeros on every side, then crop a random ``size`` window per image.

    ``(N, C, H, W) -> (N, C, sH, sW)``. Offsets are per image, drawn uniformly in
    ``[0, H + 2*padding - sH]`` x ``[0, W + 2*padding - sW]``; the crop is one gather with fancy
    indexing from the padded batch. ``padding_mode`` is "constant" (zeros, the CIFAR recipe) or
    "reflect" / "edge" (passed to ``xp.pad``).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int = 0,
        padding_mode: str = "constant",
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(rng)
        self.size = pair("RandomCrop", "size", size, 1)
        self.padding = int(padding)
        if self.padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        if padding_mode not in ("constant", "reflect", "edge"):
            raise ValueError(f"RandomCrop: padding_mode must be 'constant', 'reflect' or 'edge', got {padding_mode!r}")
        self.padding_mode = padding_mode

    def sample(self, n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """Per-image offsets (n, 2) int64 (top, left) into the padded image, on the host."""
        sh, sw = self.size
        ph, pw = height + 2 * self.padding, width + 2 * self.padding
        if sh > ph or sw > pw:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the padded image ({ph}, {pw})")
        top = rng.integers(0, ph - sh + 1, size=n)
        left = rng.integers(0, pw - sw + 1, size=n)
        return np.stack([top, left], axis=1).astype(np.int64)

    def apply(self, x: Any, offsets: np.ndarray) -> Any:
        """Crop with given offsets (N, 2) (top, left into the padded image): (N, C, H, W) -> (N, C, sH, sW)."""
        _check_batch("RandomCrop", x)
        xp = backend.xp_of(x)
        n, c = x.shape[:2]
        p = self.padding
        padded = x
        if p:
            pad_width = ((0, 0), (0, 0), (p, p), (p, p))
            padded = xp.pad(x, pad_width, mode=self.padding_mode)
        offsets = backend.to_device(np.asarray(offsets, dtype=np.int64), backend.device_of(x))
        sh, sw = self.size
        rows = offsets[:, 0:1] + xp.arange(sh)  # (N, sH)
        cols = offsets[:, 1:2] + xp.arange(sw)  # (N, sW)
        batch = xp.arange(n)[:, None, None, None]
        chans = xp.arange(c)[None, :, None, None]
        return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("RandomCrop", x)
        return self.apply(x, self.sample(x.shape[0], x.shape[2], x.shape[3], self._generator(rng)))

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r})"


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        super().__init__(rng)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Which images to flip: (n,) bool, on the host."""
        return rng.random(n) < self.p

    def apply(self, x: Any, flip: np.ndarray) -> Any:
        """Flip the images where ``flip`` (N,) is True."""
        _check_batch("RandomHorizontalFlip", x)
        xp = backend.xp_of(x)
        mask = backend.to_device(np.asarray(flip, dtype=bool), backend.device_of(x))
        return xp.where(mask[:, None, None, None], x[..., ::-1], x)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("RandomHorizontalFlip", x)
        return self.apply(x, self.sample(x.shape[0], self._generator(rng)))

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize(Transform):
    """Per-channel ``(x - mean[c]) / std[c]``: (N, C, H, W) -> (N, C, H, W), in x's float dtype."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(None)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean has {self.mean.size} values, std has {self.std.size}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("Normalize", x)
        if x.shape[1] != self.mean.size:
            raise ValueError(f"Normalize: batch has {x.shape[1]} channels, mean/std have {self.mean.size} (batch shape {x.shape})")
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        device = backend.device_of(x)
        mean = backend.to_device(self.mean.astype(dtype).reshape(1, -1, 1, 1), device)
        inv_std = backend.to_device((1.0 / self.std).astype(dtype).reshape(1, -1, 1, 1), device)
        return (x.astype(dtype, copy=False) - mean) * inv_std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Cutout(Transform):
    """Zero one random ``size`` x ``size`` square per image (DeVries & Taylor, 2017), with probability ``p``.

    ``(N, C, H, W) -> (N, C, H, W)``. The square's centre is uniform over the image and the square is
    clipped at the borders, so near an edge fewer than size*size pixels are zeroed. All channels are
    zeroed. Vectorised: one (N, H, W) mask from per-image row and column ranges.
    """

    def __init__(self, size: int, p: float = 1.0, rng: np.random.Generator | int | None = None) -> None:
        super().__init__(rng)
        if int(size) < 0:
            raise ValueError(f"Cutout: size must be >= 0, got {size}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Cutout: p must be in [0, 1], got {p}")
        self.size = int(size)
        self.p = float(p)

    def sample(self, n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """Per-image (top, left, apply) (n, 3) int64 on the host; top/left may be negative (clipped square)."""
        cy = rng.integers(0, height, size=n)
        cx = rng.integers(0, width, size=n)
        apply = rng.random(n) < self.p
        half = self.size // 2
        return np.stack([cy - half, cx - half, apply], axis=1).astype(np.int64)

    def apply(self, x: Any, params: np.ndarray) -> Any:
        """Zero the squares ``params`` (N, 3) (top, left, apply): rows [top, top+size) x cols [left, left+size)."""
        _check_batch("Cutout", x)
        xp = backend.xp_of(x)
        params = backend.to_device(np.asarray(params, dtype=np.int64), backend.device_of(x))
        top, left, on = params[:, 0:1], params[:, 1:2], params[:, 2:3] != 0
        ys = xp.arange(x.shape[2])[None, :]
        xs = xp.arange(x.shape[3])[None, :]
        rows = (ys >= top) & (ys < top + self.size) & on  # (N, H)
        cols = (xs >= left) & (xs < left + self.size)  # (N, W)
        hole = rows[:, :, None] & cols[:, None, :]  # (N, H, W)
        return xp.where(hole[:, None, :, :], xp.zeros((), dtype=x.dtype), x)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("Cutout", x)
        return self.apply(x, self.sample(x.shape[0], x.shape[2], x.shape[3], self._generator(rng)))

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, p={self.p})"


class Compose(Transform):
    """Apply transforms in order; the one ``rng`` given to the call is passed to each of them."""

    def __init__(self, transforms: Sequence[Callable[..., Any]], rng: np.random.Generator | int | None = None) -> None:
        super().__init__(rng)
        self.transforms = list(transforms)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        gen = rng if rng is not None else self.rng
        for t in self.transforms:
            x = call_transform(t, x, gen)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def call_transform(transform: Callable[..., Any], x: Any, rng: np.random.Generator | None) -> Any:
    """Call a transform with ``rng`` if it is a :class:`Transform`, else as a plain ``f(x) -> array``."""
    if isinstance(transform, Transform):
        return transform(x, rng=rng)
    return transform(x)


__all__ = ["Compose", "Cutout", "Normalize", "RandomCrop", "RandomHorizontalFlip", "Transform", "call_transform"]
