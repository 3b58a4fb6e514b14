"""Real cos/sin RoPE equals sam2's complex-number RoPE attention."""

import copy

import pytest
import torch

from fssam2_export.rope import (
    RealRoPEAttention,
    pair_halves,
    real_rope_memory_attention,
    rotate,
    rotation_tables,
)


def _attn_pair(tiny_model, which):
    layer = tiny_model.model.memory_attention.layers[0]
    original = getattr(layer, which)
    e = tiny_model.embed_size
    return original, RealRoPEAttention(copy.deepcopy(original), (e, e))


@torch.no_grad()
def test_self_attention_matches_sam2(tiny_model):
    original, real = _attn_pair(tiny_model, "self_attn")
    n = tiny_model.embed_size**2
    x = torch.randn(1, n, original.embedding_dim)
    expected = original(x, x, x)
    assert torch.allclose(real(x, x, x), expected, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
@torch.no_grad()
def test_cross_attention_matches_sam2_for_k_supports(tiny_model, k):
    original, real = _attn_pair(tiny_model, "cross_attn_image")
    n = tiny_model.embed_size**2
    q = torch.randn(1, n, original.embedding_dim)
    mem, mem_pos = torch.randn(1, k * n, original.kv_in_dim), torch.randn(1, k * n, original.kv_in_dim)
    assert torch.allclose(real(q, mem + mem_pos, mem), original(q, mem + mem_pos, mem), atol=1e-5)


@torch.no_grad()
def test_cross_attention_projects_values_after_attending(tiny_model):
    """The 64-channel memory values are projected once per query token, not once per memory token."""
    _, real = _attn_pair(tiny_model, "cross_attn_image")
    n = tiny_model.embed_size**2
    rows = []
    real.attn.v_proj.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[-2]))
    real(torch.randn(1, n, 256), torch.randn(1, 3 * n, 64), torch.randn(1, 3 * n, 64))
    assert rows == [n]


@torch.no_grad()
def test_rotation_is_not_trivially_equal():
    """A wrong rotation (sin sign flipped) must be detectable by the comparisons above."""
    x = torch.randn(1, 1, 16, 8)
    ang = torch.rand(16, 4) * 3
    assert not torch.allclose(
        rotate(x, *rotation_tables(ang.cos(), ang.sin())), rotate(x, *rotation_tables(ang.cos(), -ang.sin())), atol=1e-3
    )


@pytest.mark.parametrize("heads", [1, 2])
@torch.no_grad()
def test_rotation_of_the_reordered_projection_is_sam2s_complex_rotation_reordered(heads):
    """rotate(pair_halves(linear)(x)) == x W^T * e^(i angle) on channel pairs (2i, 2i+1) (sam2's view_as_complex
    form), each head's channels reordered: pair firsts, then pair seconds."""
    linear = torch.nn.Linear(8, 8 * heads)
    x, ang = torch.randn(1, 16, 8), torch.rand(16, 4) * 3
    pairs = linear(x).unflatten(-1, (heads, -1, 2)).transpose(1, 2)  # (1, heads, 16, 4, 2)
    rotated = torch.view_as_real(torch.view_as_complex(pairs.contiguous()) * torch.polar(torch.ones_like(ang), ang))
    expected = torch.cat((rotated[..., 0], rotated[..., 1]), dim=-1)
    got = rotate(
        pair_halves(linear, heads)(x).unflatten(-1, (heads, -1)).transpose(1, 2), *rotation_tables(ang.cos(), ang.sin())
    )
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, rotated.flatten(-2), atol=1e-3), "the order differs from sam2's interleaved one"


@torch.no_grad()
def test_memory_attention_copy_matches_and_leaves_original_alone(tiny_model):
    sam = tiny_model.model
    e = tiny_model.embed_size
    patched = real_rope_memory_attention(sam.memory_attention, (e, e))
    curr, pos = torch.randn(e * e, 1, 256), torch.randn(e * e, 1, 256)
    mem, mem_pos = torch.randn(2 * e * e, 1, 64), torch.randn(2 * e * e, 1, 64)
    expected = sam.memory_attention(curr=curr, curr_pos=pos, memory=mem, memory_pos=mem_pos)
    got = patched(curr=curr, curr_pos=pos, memory=mem, memory_pos=mem_pos)
    assert torch.allclose(got, expected, atol=1e-5)
    assert type(sam.memory_attention.layers[0].self_attn).__name__ == "RoPEAttention"


def test_object_pointer_tokens_are_refused(tiny_model):
    _, real = _attn_pair(tiny_model, "cross_attn_image")
    n = tiny_model.embed_size**2
    with pytest.raises(ValueError, match="object-pointer"):
        real(torch.randn(1, n, 256), torch.randn(1, n + 4, 64), torch.randn(1, n + 4, 64), num_k_exclude_rope=4)
