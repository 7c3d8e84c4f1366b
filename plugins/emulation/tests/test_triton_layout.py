"""The ``triton`` backend's weight conversion (layout.py), on any machine: no kernels.

The fragment words are checked by decoding them with the formulas the PTX decode uses
(masks, rotations and one multiply, written out again here), so a mistake in the bit
table or in the word order shows up as codes that differ from the checkpoint's.
"""

from __future__ import annotations

import pytest
import torch

from mxmoe import MoEConfig, random_weights
from mxmoe_emulation.triton_backend.layout import convert, fragment_words
from test_triton_helpers import fresh_seed

MASK = 0x81C081C0


def _rotl(w: torch.Tensor, bits: int) -> torch.Tensor:
    return ((w << bits) | (w >> (32 - bits))) & 0xFFFFFFFF


def _decoded_codes(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """E2M1 codes [N, K] read back from one matrix's fragment words (uint8 [N, K/2])."""
    w = words.reshape(-1).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    patterns = (w & MASK, _rotl(w, 10) & MASK, _rotl(w, 13) & MASK,
                (((w & 0x001B001B) * 0x1084) & 0xFFFFFFFF) & MASK)
    codes = torch.empty(n, k, dtype=torch.int64)
    # word order (group, 64-column run, r, c, step); pattern i is rows (r, r + 8, r, r + 8)
    # and columns (2c, 2c, 2c + 8, 2c + 8) of the step's 16 x 16 piece, plus one column
    view = codes.view(n // 16, 2, 8, k // 64, 4, 2, 4, 2)  # g rr r q s kk c e
    for i, pattern in enumerate(patterns):
        pattern = pattern.view(n // 16, k // 64, 8, 4, 4)  # g q r c s
        for e in range(2):
            half = (pattern >> (16 * e)) & 0xFFFF
            code = ((half >> 6) & 7) | ((half >> 12) & 8)
            view[:, i % 2, :, :, :, i // 2, :, e] = code.permute(0, 2, 1, 4, 3)
    return codes


@pytest.mark.parametrize("n, k", [(16, 64), (48, 192), (64, 128)])
def test_fragment_words_decode_to_the_checkpoint_codes(n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    packed = torch.randint(0, 256, (3, n, k // 2), dtype=torch.uint8, generator=gen)
    words = fragment_words(packed)
    assert words.shape == packed.shape and words.dtype == torch.uint8
    for x in range(packed.shape[0]):
        expected = torch.stack((packed[x] & 0xF, packed[x] >> 4), dim=-1).reshape(n, k)
        assert torch.equal(_decoded_codes(words[x], n, k), expected.to(torch.int64))


@pytest.mark.parametrize("shape", [(1, 24, 32), (1, 16, 40)])
def test_fragment_words_name_the_shape_they_need(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match=r"packed: expected N a multiple of 16 and K of 64"):
        fragment_words(torch.zeros(shape, dtype=torch.uint8))


@pytest.mark.parametrize("activation, interleaved", [("swigluoai", True), ("silu", False)])
def test_gate_and_up_rows_become_halves(activation: str, interleaved: bool) -> None:
    config = MoEConfig(num_experts=2, top_k=1, hidden_size=64, intermediate_size=64,
                       activation=activation, has_bias=True, weight_format="mxfp8")
    weights = random_weights(config, seed=fresh_seed())
    converted = convert(config, weights)
    i = config.intermediate_size
    gate = slice(0, None, 2) if interleaved else slice(0, i)
    up = slice(1, None, 2) if interleaved else slice(i, 2 * i)
    as_bytes = weights.w13.view(torch.uint8)
    assert torch.equal(converted.w13[:, :i], as_bytes[:, gate])
    assert torch.equal(converted.w13[:, i:], as_bytes[:, up])
    assert torch.equal(converted.w13_scale[:, :i, :2], weights.w13_scale[:, gate])
    assert torch.equal(converted.w13_bias[:, i:], weights.w13_bias[:, up].float())
