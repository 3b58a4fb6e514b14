"""The four exported graphs as thin nn.Module wrappers around sam2's own modules.

Tensor layout at every graph boundary is batch-first (batch = 1): feature maps NCHW, memory tokens
(1, L, C). S = image size, E = S/16.

- image_encoder:    image (1,3,S,S) -> high_res_feat0 (1,32,S/4,S/4), high_res_feat1 (1,64,S/8,S/8),
                    image_embed (1,256,E,E), image_pos (1,256,E,E)
- memory_encoder:   image_embed, mask_logits (1,1,S,S) -> memory (1,E*E,64), memory_pos (1,E*E,64)
- memory_attention: image_embed, image_pos, memory (1,L,64), memory_pos (1,L,64), L = K*E*E dynamic
                    -> conditioned_embed (1,256,E,E)
- mask_decoder:     conditioned_embed, high_res_feat0, high_res_feat1 -> low_res_logits (1,1,S/4,S/4),
                    iou_score (1,1), object_score_logits (1,1)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .hiera import separate_qkv_image_encoder
from .rope import real_rope_memory_attention


class ImageEncoderGraph(nn.Module):
    """sam2 `forward_image`: Hiera + FPN, high-res levels projected by the decoder's conv_s0/conv_s1; run on a
    shallow copy of the model whose image encoder is a copy with q, k, v projected apart (`hiera`)."""

    input_names = ["image"]
    output_names = ["high_res_feat0", "high_res_feat1", "image_embed", "image_pos"]

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = copy.copy(sam)
        self.sam._modules = dict(sam._modules, image_encoder=separate_qkv_image_encoder(sam.image_encoder))

    def forward(self, image: torch.Tensor):
        out = self.sam.forward_image(image)
        n = self.sam.num_feature_levels
        feats, pos = out["backbone_fpn"][-n:], out["vision_pos_enc"][-n:]
        return feats[0], feats[1], feats[-1], pos[-1]


class MemoryEncoderGraph(nn.Module):
    """sam2's memory encoder on a support's embedding and its mask as logits (sigmoid skipped, as FS-SAM2)."""

    input_names = ["image_embed", "mask_logits"]
    output_names = ["memory", "memory_pos"]

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.memory_encoder = sam.memory_encoder

    def forward(self, image_embed: torch.Tensor, mask_logits: torch.Tensor):
        out = self.memory_encoder(image_embed, mask_logits, skip_mask_sigmoid=True)
        return out["vision_features"].flatten(2).transpose(1, 2), out["vision_pos_enc"][0].flatten(2).transpose(1, 2)


class MemoryAttentionGraph(nn.Module):
    """sam2's memory attention (real-valued RoPE) over a memory of any K supports."""

    input_names = ["image_embed", "image_pos", "memory", "memory_pos"]
    output_names = ["conditioned_embed"]

    def __init__(self, sam: nn.Module, embed_size: int):
        super().__init__()
        self.memory_attention = real_rope_memory_attention(sam.memory_attention, (embed_size, embed_size))

    def forward(self, image_embed, image_pos, memory, memory_pos):
        out = self.memory_attention(
            curr=image_embed.flatten(2).permute(2, 0, 1),
            curr_pos=image_pos.flatten(2).permute(2, 0, 1),
            memory=memory.transpose(0, 1),
            memory_pos=memory_pos.transpose(0, 1),
            num_obj_ptr_tokens=0,
        )
        return out.permute(1, 2, 0).reshape(image_embed.shape)


class MaskDecoderGraph(nn.Module):
    """Prompt encoder (one padding point, label -1, no mask) folded into sam2's mask decoder,
    single-mask output with the stability-based multimask fallback."""

    input_names = ["conditioned_embed", "high_res_feat0", "high_res_feat1"]
    output_names = ["low_res_logits", "iou_score", "object_score_logits"]

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.prompt_encoder = sam.sam_prompt_encoder
        self.mask_decoder = sam.sam_mask_decoder

    def forward(self, conditioned_embed, high_res_feat0, high_res_feat1):
        return decode_single_mask(
            self.prompt_encoder, self.mask_decoder, conditioned_embed, padding_point(), [high_res_feat0, high_res_feat1]
        )


def _decoder_inputs(
    prompt_encoder: nn.Module,
    embeddings: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor],
    high_res_features: list[torch.Tensor],
) -> dict:
    """The mask decoder's keyword inputs for the point prompt `points` (no box, no mask prompt)."""
    sparse, dense = prompt_encoder(points=points, boxes=None, masks=None)
    return {
        "image_embeddings": embeddings,
        "image_pe": prompt_encoder.get_dense_pe(),
        "sparse_prompt_embeddings": sparse,
        "dense_prompt_embeddings": dense,
        "repeat_image": False,
        "high_res_features": high_res_features,
    }


def decode_single_mask(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embeddings: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor],
    high_res_features: list[torch.Tensor],
):
    """SAM2's mask decoder as FS-SAM2 runs it: the point prompt `points` (the padding point: no prompt), one mask
    output. Returns (low-res mask logits, IoU score, object score logits)."""
    masks, iou, _, obj = mask_decoder(
        **_decoder_inputs(prompt_encoder, embeddings, points, high_res_features), multimask_output=False
    )
    return masks, iou, obj


def decode_all_masks(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embeddings: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor],
    high_res_features: list[torch.Tensor],
):
    """Every output token of SAM2's mask decoder (what training supervises: token 0 is the single-mask output
    `decode_single_mask` returns in training mode, tokens 1-3 the multimask outputs that SAM2's stability fallback
    picks from at inference). Returns (low-res logits (B, 4, h, w), IoU scores (B, 4), object score logits)."""
    masks, iou, _, obj = mask_decoder.predict_masks(
        **_decoder_inputs(prompt_encoder, embeddings, points, high_res_features)
    )
    return masks, iou, obj


def padding_point() -> tuple[torch.Tensor, torch.Tensor]:
    """FS-SAM2's query prompt: a single point at (0, 0) with label -1 ('not a point')."""
    return torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)
