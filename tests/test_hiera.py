"""Hiera attention with q, k, v projected apart equals sam2's fused-qkv MultiScaleAttention."""

import pytest
import torch

from fssam2_export.graphs import ImageEncoderGraph
from fssam2_export.hiera import SeparateQKVAttention
from fssam2_export.rope import linear_rows


def _blocks(tiny_model):
    """A block inside a stage and one at a stage change (query pooling, wider output)."""
    blocks = tiny_model.model.image_encoder.trunk.blocks
    inner = next(b for b in blocks if b.attn.q_pool is None and b.window_size > 0)
    change = next(b for b in blocks if b.attn.q_pool is not None)
    return {"inner": inner, "stage-change": change}


@pytest.mark.parametrize("which", ["inner", "stage-change"])
@torch.no_grad()
def test_separate_projections_match_the_fused_one(tiny_model, which):
    attn = _blocks(tiny_model)[which].attn
    x = torch.randn(2, 8, 8, attn.dim)  # two windows of 8x8 tokens
    expected = attn(x)
    assert torch.allclose(SeparateQKVAttention(attn)(x), expected, atol=1e-5)

    swapped = SeparateQKVAttention(attn)
    n = attn.dim_out
    swapped.q, swapped.k = linear_rows(attn.qkv, slice(n, 2 * n)), linear_rows(attn.qkv, slice(0, n))  # q, k exchanged
    assert not torch.allclose(swapped(x), expected, atol=1e-3)


@torch.no_grad()
def test_exported_image_encoder_matches_sam2_and_leaves_it_alone(tiny_model):
    sam = tiny_model.model
    graph = ImageEncoderGraph(sam)
    blocks = [b.attn for b in graph.sam.image_encoder.trunk.blocks]
    assert all(isinstance(a, SeparateQKVAttention) for a in blocks)
    assert not any(isinstance(b.attn, SeparateQKVAttention) for b in sam.image_encoder.trunk.blocks)
    assert graph.sam.memory_attention is sam.memory_attention  # only the image encoder is copied

    image = torch.randn(1, 3, tiny_model.image_size, tiny_model.image_size)
    out = sam.forward_image(image)
    n = sam.num_feature_levels
    expected = (
        out["backbone_fpn"][-n],
        out["backbone_fpn"][-n + 1],
        out["backbone_fpn"][-1],
        out["vision_pos_enc"][-1],
    )
    for got, want in zip(graph(image), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
