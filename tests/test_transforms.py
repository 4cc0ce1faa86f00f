"""Batch transforms against independent per-image loop references, on the test device."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires.backend import to_device, to_numpy
from minires.data.transforms import Compose, Cutout, Normalize, RandomCrop, RandomHorizontalFlip


def _batch(n: int = 6, c: int = 3, h: int = 9, w: int = 7, seed: int = 0) -> np.ndarray:
    # strictly positive so zeroed pixels (padding, cutout) are recognisable
    return np.random.default_rng(seed).uniform(0.1, 1.0, size=(n, c, h, w)).astype(np.float32)


def _crop_reference(x: np.ndarray, size: tuple[int, int], padding: int, offsets: np.ndarray, mode: str = "constant") -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1], *size), dtype=x.dtype)
    for i in range(x.shape[0]):
        img = np.pad(x[i], ((0, 0), (padding, padding), (padding, padding)), mode=mode)
        top, left = offsets[i]
        out[i] = img[:, top : top + size[0], left : left + size[1]]
    return out


@pytest.mark.parametrize("size,padding,mode", [(9, 2, "constant"), ((5, 4), 0, "constant"), ((8, 6), 3, "reflect"), (4, 1, "edge")])
def test_random_crop_matches_loop(device: str, size: int | tuple[int, int], padding: int, mode: str) -> None:
    x = _batch(n=12)
    crop = RandomCrop(size, padding=padding, padding_mode=mode)
    offsets = crop.sample(12, 9, 7, np.random.default_rng(3))
    out = crop.apply(to_device(x, device), offsets)
    size2 = (size, size) if isinstance(size, int) else size
    np.testing.assert_array_equal(to_numpy(out), _crop_reference(x, size2, padding, offsets, mode))
    # the seeded call draws exactly those offsets
    again = crop(to_device(x, device), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(to_numpy(again), to_numpy(out))


def test_random_crop_offsets_cover_range_and_pad_with_zeros() -> None:
    crop = RandomCrop(8, padding=4)
    offsets = crop.sample(2000, 8, 8, np.random.default_rng(0))
    assert offsets.min() == 0 and offsets.max() == 8  # every offset in [0, 2*padding] is reachable
    x = np.ones((1, 1, 8, 8), np.float32)
    corner = crop.apply(x, np.array([[0, 0]]))
    assert corner[0, 0, :4].sum() == 0 and corner[0, 0, :, :4].sum() == 0 and corner[0, 0, 4:, 4:].min() == 1
    centred = crop.apply(x, np.array([[4, 4]]))
    np.testing.assert_array_equal(centred, x)


def test_random_crop_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(12, padding=1)(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomCrop(4)(np.zeros((8, 8), np.float32))


def test_flip_matches_np_flip(device: str) -> None:
    x = _batch(n=16)
    flip = RandomHorizontalFlip(p=0.5)
    mask = flip.sample(16, np.random.default_rng(1))
    assert 0 < mask.sum() < 16
    out = to_numpy(flip(to_device(x, device), rng=np.random.default_rng(1)))
    for i in range(16):
        np.testing.assert_array_equal(out[i], np.flip(x[i], axis=-1) if mask[i] else x[i])
    np.testing.assert_array_equal(to_numpy(RandomHorizontalFlip(p=0.0)(to_device(x, device))), x)
    np.testing.assert_array_equal(to_numpy(RandomHorizontalFlip(p=1.0)(to_device(x, device))), np.flip(x, axis=-1))


def test_normalize_formula(device: str) -> None:
    x = _batch()
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    out = Normalize(mean, std)(to_device(x, device))
    assert out.dtype == np.float32 and out.shape == x.shape
    ref = (x.astype(np.float64) - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 channels, mean/std have 1"):
        Normalize((0.5,), (0.5,))(x)
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.5,), (0.0,))


def _cutout_reference(x: np.ndarray, size: int, params: np.ndarray) -> np.ndarray:
    out = x.copy()
    h, w = x.shape[2:]
    for i, (top, left, on) in enumerate(params):
        if on:
            out[i, :, max(top, 0) : min(top + size, h), max(left, 0) : min(left + size, w)] = 0
    return out


@pytest.mark.parametrize("size", [1, 4, 5])
def test_cutout_zeroes_clipped_square(device: str, size: int) -> None:
    x = _batch(n=64, h=10, w=8)
    cut = Cutout(size)
    params = cut.sample(64, 10, 8, np.random.default_rng(size))
    out = to_numpy(cut(to_device(x, device), rng=np.random.default_rng(size)))
    np.testing.assert_array_equal(out, _cutout_reference(x, size, params))
    # independent count: the zeroed area is the square clipped at the borders, the same in every channel
    for i, (top, left, _) in enumerate(params):
        rows = min(top + size, 10) - max(top, 0)
        cols = min(left + size, 8) - max(left, 0)
        zeros = (out[i] == 0).sum(axis=(1, 2))
        assert (zeros == rows * cols).all()
        if 0 <= top and top + size <= 10 and 0 <= left and left + size <= 8:
            assert rows * cols == size * size
    if size > 1:
        assert (params[:, 0] < 0).any() or (params[:, 1] < 0).any()  # some squares were clipped


def test_cutout_probability() -> None:
    x = _batch(n=8)
    np.testing.assert_array_equal(Cutout(3, p=0.0)(x), x)


def test_determinism_with_seed(device: str) -> None:
    x = to_device(_batch(n=32, h=8, w=8), device)
    pipeline = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip(), Cutout(3), Normalize((0.5,) * 3, (0.25,) * 3)])
    a = to_numpy(pipeline(x, rng=np.random.default_rng(7)))
    b = to_numpy(pipeline(x, rng=np.random.default_rng(7)))
    c = to_numpy(pipeline(x, rng=np.random.default_rng(8)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # constructor seed, and minires' global generator
    np.testing.assert_array_equal(to_numpy(RandomCrop(8, 2, rng=5)(x)), to_numpy(RandomCrop(8, 2)(x, rng=np.random.default_rng(5))))
    mr.manual_seed(11)
    d = to_numpy(pipeline(x))
    mr.manual_seed(11)
    np.testing.assert_array_equal(to_numpy(pipeline(x)), d)


def test_compose_threads_one_generator() -> None:
    x = _batch(n=10, h=8, w=8)
    crop, flip = RandomCrop(6, padding=1), RandomHorizontalFlip()
    rng = np.random.default_rng(2)
    expected = flip(crop(x, rng=rng), rng=rng)
    np.testing.assert_array_equal(Compose([crop, flip, lambda a: a * 1])(x, rng=np.random.default_rng(2)), expected)


def test_transforms_return_new_arrays() -> None:
    x = _batch(n=4, h=8, w=8)
    before = x.copy()
    for t in (RandomCrop(8, 2), RandomHorizontalFlip(1.0), Cutout(4), Normalize((0.0,) * 3, (1.0,) * 3)):
        t(x)
    np.testing.assert_array_equal(x, before)
