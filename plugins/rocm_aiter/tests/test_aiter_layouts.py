"""The layout conversions of ``mxmoe_rocm_aiter.layouts``: exact round trips, the
documented byte positions checked element by element, and clear errors on shapes the
layouts cannot tile."""

from __future__ import annotations

import pytest
import torch

from mxmoe_rocm_aiter import layouts


def random_bytes(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 8), (2, 64, 16), (3, 96, 24)])
def test_cdna4_scale_order_round_trips(shape):
    scales = random_bytes(*shape)
    ordered = layouts.cdna4_scale_order(scales)
    assert ordered.shape == scales.shape and not torch.equal(ordered, scales)
    assert torch.equal(layouts.cdna4_scale_order_inverse(ordered), scales)


@pytest.mark.parametrize("e,n,k", [(1, 32, 256), (3, 64, 512), (2, 576, 768)])
def test_gfx950_a8w4_layout_round_trips(e, n, k):
    values, scales = random_bytes(e, n, k // 2, seed=1), random_bytes(e, n, k // 32, seed=2)
    v = layouts.gfx950_a8w4_values(values)
    s = layouts.gfx950_a8w4_scales(scales)
    # what moe_gemm_a8w4 asserts and indexes: column-major values, [E, K, N/32] scales
    assert v.shape == (e, k // 2, n) and v.stride(-2) == 1
    assert s.shape == (e, k, n // 32) and s.stride(-2) == 1
    assert torch.equal(layouts.gfx950_a8w4_values_inverse(v), values)
    assert torch.equal(layouts.gfx950_a8w4_scales_inverse(s), scales)


@pytest.mark.parametrize("e,n,k", [(1, 16, 64), (2, 48, 128), (3, 512, 256)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float8_e4m3fn])
def test_weight_tiles_round_trip(e, n, k, dtype):
    w = random_bytes(e, n, k, seed=3).view(dtype)
    tiled = layouts.preshuffle_weight_tiles(w)
    assert tiled.dtype == dtype and tiled.shape == w.shape
    back = layouts.preshuffle_weight_tiles_inverse(tiled)
    assert torch.equal(back.view(torch.uint8), w.view(torch.uint8))


@pytest.mark.parametrize("block", [1, 2, 16])
@pytest.mark.parametrize("trailing", [(), (8,)])
def test_gate_up_blocks_round_trip(block, trailing):
    t = random_bytes(3, 64, *trailing, seed=4)
    blocks = layouts.gate_up_halves_to_blocks(t, block)
    assert torch.equal(layouts.gate_up_blocks_to_halves(blocks, block), t)
    floats = torch.randn(3, 64, *trailing)
    assert torch.equal(layouts.gate_up_blocks_to_halves(
        layouts.gate_up_halves_to_blocks(floats, block), block), floats)


# -- the documented positions, element by element ---------------------------------------------


def test_cdna4_scale_order_positions():
    """Row n = 32g + 16a + r, column c = 8j + 4b + q lands at offset
    (((j*4 + q)*16 + r)*2 + b)*2 + a of group g's run."""
    rows, cols = 64, 16
    row_id = torch.arange(rows, dtype=torch.uint8).unsqueeze(1).expand(rows, cols).contiguous()
    col_id = torch.arange(cols, dtype=torch.uint8).unsqueeze(0).expand(rows, cols).contiguous()
    runs_row = layouts.cdna4_scale_order(row_id).reshape(rows // 32, 32 * cols)
    runs_col = layouts.cdna4_scale_order(col_id).reshape(rows // 32, 32 * cols)
    for n in range(rows):
        g, a, r = n // 32, (n % 32) // 16, n % 16
        for c in range(cols):
            j, b, q = c // 8, (c % 8) // 4, c % 4
            offset = (((j * 4 + q) * 16 + r) * 2 + b) * 2 + a
            assert (int(runs_row[g, offset]), int(runs_col[g, offset])) == (n, c)


def test_gfx950_a8w4_scales_hold_one_column_per_32_rows():
    scales = random_bytes(2, 64, 16, seed=5)
    swizzled = layouts.gfx950_a8w4_scales(scales)
    for group in range(2):
        column = swizzled[:, :, group]
        assert sorted(column.flatten().tolist()) == sorted(
            scales[:, 32 * group:32 * (group + 1), :].flatten().tolist())


def test_weight_tile_positions():
    """Element (row, byte) of a [16 x 64] tile sits in lane byte // 16, at
    row * 16 + byte % 16 within the lane's 256 bytes."""
    n, k = 32, 128
    rows = torch.arange(n, dtype=torch.uint8).view(1, n, 1).expand(1, n, k).contiguous()
    cols = torch.arange(k, dtype=torch.uint8).view(1, 1, k).expand(1, n, k).contiguous()
    flat_rows = layouts.preshuffle_weight_tiles(rows).flatten()
    flat_cols = layouts.preshuffle_weight_tiles(cols).flatten()
    for row in range(n):
        for col in range(k):
            tile = (row // 16) * (k // 64) + col // 64
            lane = (col % 64) // 16
            offset = tile * 1024 + lane * 256 + (row % 16) * 16 + col % 16
            assert (int(flat_rows[offset]), int(flat_cols[offset])) == (row, col)


def test_gate_up_blocks_of_one_are_gpt_oss_interleaving():
    halves = torch.arange(2 * 8).view(1, 16)  # gates 0..7, ups 8..15
    pairs = layouts.gate_up_halves_to_blocks(halves, 1)
    assert pairs.flatten().tolist() == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    blocks = layouts.gate_up_halves_to_blocks(torch.arange(64).view(1, 64), 16).flatten()
    assert blocks[:16].tolist() == list(range(16))  # gates 0..15
    assert blocks[16:32].tolist() == list(range(32, 48))  # ups 0..15
    assert blocks[32:48].tolist() == list(range(16, 32))  # gates 16..31


# -- expert parallelism ----------------------------------------------------------------------


def test_expert_mask_format():
    mask = layouts.expert_mask((-1, 0, -1, 1, 2, -1))
    assert mask.dtype == torch.int32
    assert mask.tolist() == [0, 1, 0, 1, 1, 0, 0]  # E_global + 1, trailing 0 sentinel


def test_local_experts_in_global_order():
    assert layouts.local_experts_in_global_order((1, -1, 0, 2)) == [1, 0, 2]
    assert layouts.local_experts_in_global_order((-1, 0, 1, -1)) == [0, 1]


@pytest.mark.parametrize("bad", [(), (-1, -1), (0, 0), (0, 2), (-2, 0)])
def test_invalid_expert_maps_are_rejected(bad):
    with pytest.raises(ValueError, match="expert_map"):
        layouts.expert_mask(bad)


# -- clear errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("call, shape, match", [
    (layouts.cdna4_scale_order, (48, 8), "rows"),
    (layouts.cdna4_scale_order, (32, 6), "columns"),
    (layouts.preshuffle_weight_tiles, (1, 24, 64), "N"),
    (layouts.preshuffle_weight_tiles, (1, 16, 96), "K"),
    (lambda t: layouts.gate_up_halves_to_blocks(t, 16), (1, 48, 64), "block"),
])
def test_untileable_shapes_raise(call, shape, match):
    with pytest.raises(ValueError, match=match):
        call(random_bytes(*shape))


def test_a8w4_layouts_check_dtypes():
    with pytest.raises(ValueError, match="uint8"):
        layouts.gfx950_a8w4_values(torch.zeros(1, 32, 16))
    with pytest.raises(ValueError, match="uint8"):
        layouts.gfx950_a8w4_scales(torch.zeros(1, 32, 8))
