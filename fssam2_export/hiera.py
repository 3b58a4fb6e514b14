"""Export-friendly attention for sam2's Hiera image encoder.

Hiera's `MultiScaleAttention` projects q, k and v with one fused linear layer and splits the result along an
inner axis of a (B, N, 3, heads, C) tensor. OpenVINO runs that split on a reference kernel (its BF16 image
encoder at 1024² takes 0.87-0.94x the time without it). `SeparateQKVAttention` wraps the module with three
linear layers, copies of the fused one's row blocks: the same function, no split. The exported copy is patched
(`separate_qkv_image_encoder`); sam2's modules, which the PyTorch reference runs, are left alone.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .rope import linear_rows


class SeparateQKVAttention(nn.Module):
    """sam2's Hiera MultiScaleAttention (query pooling at stage changes included) with q, k, v projected apart."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads, self.q_pool, self.proj = attn.num_heads, attn.q_pool, attn.proj
        n = attn.qkv.out_features // 3
        self.q, self.k, self.v = (linear_rows(attn.qkv, slice(i * n, (i + 1) * n)) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from sam2.modeling.backbones.hieradet import do_pool

        b, h, w, _ = x.shape
        q, k, v = (p(x).reshape(b, h * w, self.num_heads, -1) for p in (self.q, self.k, self.v))
        if self.q_pool:
            q = do_pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


def separate_qkv_image_encoder(image_encoder: nn.Module) -> nn.Module:
    """A copy of sam2's image encoder whose Hiera blocks use `SeparateQKVAttention`."""
    encoder = copy.deepcopy(image_encoder)
    for block in encoder.trunk.blocks:
        block.attn = SeparateQKVAttention(block.attn)
    return encoder
