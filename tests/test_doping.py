"""Selection of real images (`dsco_hub.doping`): the seeded draws and herding's picks, exactly (tiny, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsco_hub import doping
from dsco_hub.config import SourceConfig, derive_seed
from dsco_hub.data import decode_images, load_source, to_model_range
from dsco_hub.doping import herding_pool, select_herding, select_random
from dsco_hub.kernels import RandomFeatures, embed, herd


def test_select_random_is_the_permutation_of_its_own_seed():
    rows = np.array([40, 7, 13, 2, 99, 58], dtype=np.int64)
    picks = select_random(rows, 4, seed=3, class_id=2)
    expected = rows[np.random.default_rng(derive_seed(3, "random", 2)).permutation(6)[:4]]
    assert picks.tolist() == expected.tolist()
    assert picks.dtype == np.int64
    assert (
        select_random(rows, 6, 3, 2).tolist()
        == rows[np.random.default_rng(derive_seed(3, "random", 2)).permutation(6)].tolist()
    )
    assert select_random(rows, 6, 3, 1).tolist() != select_random(rows, 6, 3, 2).tolist()  # each class its own draw
    assert select_random(rows, 0, 3, 2).tolist() == []


def test_herding_pool_keeps_a_small_class_whole_and_in_its_order():
    rows = np.array([9, 4, 7, 1], dtype=np.int64)  # unsorted: a sorted pool would show the subset path was taken
    assert herding_pool(rows, 4, seed=0, class_id=1).tolist() == [9, 4, 7, 1]
    assert herding_pool(rows, 10, seed=0, class_id=1).tolist() == [9, 4, 7, 1]


def test_herding_pool_draws_a_sorted_seeded_subset_without_repeats():
    rows = np.arange(100, 130, dtype=np.int64)
    pool = herding_pool(rows, 12, seed=5, class_id=3)
    rng = np.random.default_rng(derive_seed(5, "herding-pool", 3))
    assert pool.tolist() == np.sort(rows[rng.choice(30, 12, replace=False)]).tolist()
    assert len(set(pool.tolist())) == 12
    assert pool.tolist() != herding_pool(rows, 12, seed=5, class_id=4).tolist()


@pytest.fixture
def source(tiny_repo):
    return load_source(SourceConfig(source=str(tiny_repo)))


def _herding_by_hand(source, class_id, num, pool_rows, kernel="gaussian", feature_seed=0, synthetic=None):
    """What `select_herding` promises, written out: herding in a fixed random ConvNet-3 over the pool's images."""
    channels, height, width = source.image_shape
    images = to_model_range(decode_images(source, pool_rows, channels, min(height, width)))
    phi = RandomFeatures(channels, feature_seed)
    feats = embed(phi, images)
    start = embed(phi, synthetic) if synthetic is not None else None
    return pool_rows[np.asarray(herd(feats, feats, num, start=start, kernel=kernel), dtype=np.int64)].tolist()


def test_select_herding_picks_what_herding_in_the_fixed_feature_space_picks(source):
    rows = source.class_index[0]  # 8 rows
    picks = select_herding(source, 0, 8, seed=0)
    assert picks.dtype == np.int64 and sorted(picks.tolist()) == sorted(rows.tolist())  # every row, once
    assert picks.tolist() == _herding_by_hand(source, 0, 8, rows)
    assert select_herding(source, 0, 3, seed=0).tolist() == picks[:3].tolist()  # greedy: a prefix
    # the feature map's seed and the kernel are the ones asked for
    assert select_herding(source, 0, 8, 0, feature_seed=4).tolist() == _herding_by_hand(
        source, 0, 8, rows, feature_seed=4
    )
    linear = select_herding(source, 0, 8, 0, kernel="linear", feature_seed=1).tolist()
    assert linear == _herding_by_hand(source, 0, 8, rows, "linear", feature_seed=1)
    assert linear != select_herding(source, 0, 8, 0, feature_seed=1).tolist()  # the kernel changes the order here
    assert select_herding(source, 0, 8, 0, feature_seed=4).tolist() != picks.tolist()


def test_select_herding_draws_from_the_pool_only(source):
    rows = source.class_index[1]  # 6 rows
    pool = herding_pool(rows, 4, seed=2, class_id=1)
    picks = select_herding(source, 1, 4, seed=2, pool=4)
    assert picks.tolist() == _herding_by_hand(source, 1, 4, pool)
    assert set(picks.tolist()) == set(pool.tolist()) != set(rows.tolist())


def test_doping_starts_herding_from_the_synthetic_images(source):
    rows = source.class_index[2]  # 5 rows
    channels, height, width = source.image_shape
    synthetic = torch.linspace(-1, 1, 2 * channels * height * width).reshape(2, channels, height, width)
    doped = select_herding(source, 2, 5, seed=0, synthetic=synthetic)
    assert doped.tolist() == _herding_by_hand(source, 2, 5, rows, synthetic=synthetic)
    assert doped.tolist() != select_herding(source, 2, 5, seed=0).tolist()
    # no synthetic images (an empty tensor, or None) is plain herding
    assert select_herding(source, 2, 5, 0, synthetic=synthetic[:0]).tolist() == _herding_by_hand(source, 2, 5, rows)


def test_herding_considers_at_most_5000_candidates_by_default(source, monkeypatch):
    pools = []

    def pool(rows, size, seed, class_id):
        pools.append((size, seed, class_id))
        return herding_pool(rows, size, seed, class_id)

    monkeypatch.setattr(doping, "herding_pool", pool)
    select_herding(source, 1, 2, seed=8)
    assert pools == [(5000, 8, 1)]
