"""Attention statistics say which level focuses on the foreground, in numbers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.engine.attention_stats import attention_statistics, pool_to_grid
from napari_aunet.engine.geometry import GridGeometry
from napari_aunet.engine.inference import AttentionMap


def test_pooling_counts_partial_cells_at_the_edge():
    mask = np.zeros((5, 4), bool)
    mask[4, :] = True  # the last row: a partial cell of height 1 when pooled by 2
    pooled = pool_to_grid(mask, AttentionMap(2, np.zeros((3, 2), np.float16), GridGeometry.pooled(2, 2)))
    np.testing.assert_allclose(pooled, [[0, 0], [0, 0], [1, 1]])


def test_a_focused_level_beats_a_uniform_one():
    foreground = np.zeros((16, 16), bool)
    foreground[4:8, 4:8] = True
    focused = np.zeros((8, 8), np.float16)
    focused[2:4, 2:4] = 1.0
    uniform = np.full((16, 16), 0.5, np.float16)
    stats = attention_statistics(
        {1: AttentionMap(1, uniform, GridGeometry.pooled(2, 1)), 2: AttentionMap(2, focused, GridGeometry.pooled(2, 2))},
        foreground,
    )
    by_level = {row.level: row for row in stats}
    assert by_level[2].mass_inside == pytest.approx(1.0)
    assert by_level[1].mass_inside == pytest.approx(16 / 256)
    assert by_level[2].mean_inside == pytest.approx(1.0) and by_level[2].mean_outside == pytest.approx(0.0)
    assert by_level[1].entropy == pytest.approx(1.0)
    assert by_level[2].entropy == pytest.approx(np.log(4) / np.log(64))
