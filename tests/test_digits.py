"""The embedded digits data set: sizes, stratified split, value range, statistics, determinism."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as sklearn_load_digits

from minires.data import DataLoader, Normalize, digits_mean_std, get_dataset, load_digits


def test_sizes_shapes_dtypes() -> None:
    train, test = load_digits(train=True), load_digits(train=False)
    assert len(train) == 1437 and len(test) == 360
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.classes == [str(d) for d in range(10)] and train.num_classes == 10
    assert len(get_dataset("digits", train=False)) == 360


def test_value_range_is_unit_interval() -> None:
    for ds in (load_digits(True), load_digits(False)):
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        np.testing.assert_array_equal(np.round(ds.images * 16), ds.images * 16)  # pixel values 0..16, scaled


def test_split_is_a_partition_of_the_real_images() -> None:
    bunch = sklearn_load_digits()
    all_rows = np.concatenate([bunch.images.reshape(-1, 64) / 16, bunch.target[:, None]], axis=1)
    ours = np.concatenate(
        [np.concatenate([ds.images.reshape(-1, 64), ds.labels[:, None]], axis=1) for ds in (load_digits(True), load_digits(False))]
    )
    key = np.lexsort(all_rows.T[::-1])
    np.testing.assert_allclose(ours[np.lexsort(ours.T[::-1])], all_rows[key], rtol=1e-6)


def test_stratified() -> None:
    train, test = load_digits(True), load_digits(False)
    totals = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    for cls in range(10):
        expected_test = totals[cls] * 360 / 1797
        assert abs(np.sum(test.labels == cls) - expected_test) <= 1
        assert abs(np.sum(train.labels == cls) - (totals[cls] - expected_test)) <= 1


def test_deterministic() -> None:
    a, b = load_digits(False), load_digits(False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert np.array_equal(a.labels[:20], b.labels[:20])


def test_training_statistics_normalise() -> None:
    train, test = load_digits(True), load_digits(False)
    mean, std = digits_mean_std()
    assert train.mean == mean == test.mean and train.std == std == test.std
    np.testing.assert_allclose(mean[0], 0.30538, atol=1e-4)
    np.testing.assert_allclose(std[0], 0.37612, atol=1e-4)
    loader = DataLoader(train, batch_size=len(train), transform=Normalize(train.mean, train.std), prefetch=0)
    images, _ = next(iter(loader))
    np.testing.assert_allclose(images.numpy().mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(images.numpy().std(), 1.0, atol=1e-5)
