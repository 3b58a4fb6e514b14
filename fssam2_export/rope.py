"""Export-friendly rotary attention for sam2's memory attention.

sam2's RoPEAttention rotates queries/keys with complex numbers (view_as_complex, polar), which ONNX
cannot express. `RealRoPEAttention` wraps an existing RoPEAttention (sharing its value and output
projections) and applies the same rotation with precomputed real cos/sin tables, to queries and keys whose
projections are copies with their output channels reordered (`pair_halves`, see `rotate`). Memory keys of
any length that is a multiple of the query length (K supports) are rotated block by block with the same
tables, as `rope_k_repeat` does.
Single-head attention whose value projection widens its input (the cross-attention to the 64-channel
memory) attends over the raw values and projects afterwards: the same function with fewer FLOPs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def linear_rows(linear: nn.Linear, rows: torch.Tensor | slice) -> nn.Linear:
    """A copy of `linear` computing only its output channels `rows`, in that order."""
    weight = linear.weight[rows]
    out = nn.Linear(linear.in_features, weight.shape[0], linear.bias is not None).to(linear.weight)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias[rows])
    return out


def pair_halves(linear: nn.Linear, heads: int) -> nn.Linear:
    """A copy of `linear` whose output channels come, per head, in halves: each channel pair's first elements
    (0, 2, 4, ...), then its second elements (1, 3, 5, ...), the order `rotate` takes."""
    d = linear.out_features // heads
    order = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    return linear_rows(linear, (torch.arange(heads)[:, None] * d + order).flatten().to(linear.weight.device))


def rotation_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables `rotate` takes for angles with cos/sin of shape (N, D/2): [cos, cos] and [-sin, sin], (N, D)."""
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of x (..., N, D) by the angles of `rotation_tables` (cos, sin: (N, D)); pair i is
    channel i of the first half and channel i of the second half (sam2's pair (2i, 2i+1) after `pair_halves`), in
    and out: x * [cos, cos] + [second half, first half] * [-sin, sin].

    Attention uses queries and keys only through their dot products, which a channel order shared by both leaves
    unchanged. sam2's interleaved order would cost a Concat of D/2 one-element pieces per token (OpenVINO runs it on
    its reference kernel: ~17 % of memory attention's BF16 time) or strided slices (~8 %). The signs live in the
    tables, and every product takes them at their operand's rank: OpenVINO otherwise folds a broadcast or negated
    copy of a table per product (~100 MB of copies in a 1024² memory attention)."""
    f = x.float()
    half = f.shape[-1] // 2
    return (f * cos + torch.cat((f[..., half:], f[..., :half]), dim=-1) * sin).type_as(x)


class RealRoPEAttention(nn.Module):
    """Same math as sam2's RoPEAttention for a fixed feature-map size, without complex tensors."""

    def __init__(self, attn: nn.Module, feat_size: tuple[int, int]):
        super().__init__()
        self.attn = attn
        freqs = attn.compute_cis(end_x=feat_size[0], end_y=feat_size[1])  # complex (N, D/2)
        cos, sin = rotation_tables(freqs.real.float(), freqs.imag.float())
        # (1, 1, 1, N, D): queries and keys are rotated as (B, h, r, N, D) blocks, see `_rotate`.
        self.register_buffer("cos", cos[None, None, None].contiguous(), persistent=False)
        self.register_buffer("sin", sin[None, None, None].contiguous(), persistent=False)
        self.q_proj = pair_halves(attn.q_proj, attn.num_heads)
        self.k_proj = pair_halves(attn.k_proj, attn.num_heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        if num_k_exclude_rope:
            raise ValueError("object-pointer tokens are not part of the FS-SAM2 memory")
        a = self.attn
        q = self._rotate(a._separate_heads(self.q_proj(q), a.num_heads))
        k = self._rotate(a._separate_heads(self.k_proj(k), a.num_heads))
        if a.num_heads == 1 and a.v_proj.in_features < a.v_proj.out_features:
            # Attend over the narrow memory values, then project: softmax rows sum to one, so
            # P @ (V W^T + b) == (P @ V) W^T + b, and the score-value product shrinks by out/in (4x for
            # the 64-channel memory).
            out = F.scaled_dot_product_attention(q, k, v.unsqueeze(1))
            return a.out_proj(a.v_proj(out.squeeze(1)))
        v = a._separate_heads(a.v_proj(v), a.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return a.out_proj(a._recombine_heads(out))

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, r*N, D) -> (B, h, r, N, D), rotated, and back: every block of N tokens (the query, each support's
        memory) gets the same rotation."""
        return rotate(x.unflatten(2, (-1, self.cos.shape[-2])), self.cos, self.sin).flatten(2, 3)


def real_rope_memory_attention(memory_attention: nn.Module, feat_size: tuple[int, int]) -> nn.Module:
    """A copy of sam2's MemoryAttention whose RoPE attentions use real cos/sin tables."""
    from sam2.modeling.sam.transformer import RoPEAttention

    ma = copy.deepcopy(memory_attention)
    for layer in ma.layers:
        for attr in ("self_attn", "cross_attn_image"):
            mod = getattr(layer, attr)
            if isinstance(mod, RoPEAttention):
                setattr(layer, attr, RealRoPEAttention(mod, feat_size))
    return ma
