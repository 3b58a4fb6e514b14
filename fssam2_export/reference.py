"""PyTorch reference episode: sam2's own modules called in FS-SAM2's order (its `sam2_pred.py`).

Supports: `forward_image`, then the memory encoder on the ground-truth mask as logits (mask*20-10,
sigmoid skipped); their memories are concatenated (no temporal encoding, no object pointers).
Query: `forward_image`, memory attention over that memory, prompt encoder with one padding point
(label -1), mask decoder with multimask_output=False; low-res logits upsampled bilinearly to the model
size, then to the query's size (align_corners=True, as FS-SAM2's test with original image size).

`episode_forward` is that episode batched over episodes and differentiable; meta-training (`training/`)
and `reference_episode` (the export parity reference, one episode from image files) both call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from runtime.engine.image import ImageLike, load_image, load_mask

from .graphs import decode_all_masks, decode_single_mask, padding_point

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ReferenceResult:
    logits: np.ndarray  # (H, W) float32 at the query's size
    mask: np.ndarray  # (H, W) bool
    low_res_logits: np.ndarray  # (S/4, S/4)
    iou_score: float
    object_score: float


def image_tensor(image: ImageLike, size: int) -> torch.Tensor:
    """FS-SAM2 preprocessing: Pillow resize (bicubic), to [0,1], ImageNet normalisation."""
    pil = Image.fromarray(load_image(image)).resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255.0
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std)[None]


def mask_tensor(mask: ImageLike, size: int) -> torch.Tensor:
    m = torch.from_numpy(load_mask(mask).astype(np.float32))[None, None]
    return F.interpolate(m, (size, size), mode="nearest")


@dataclass
class EpisodeOutput:
    """Batched episode output (B episodes), tensors on the model's device."""

    low_res_logits: torch.Tensor  # (B, 1, S/4, S/4)
    logits: torch.Tensor  # (B, 1, S, S): low-res logits upsampled bilinearly (align_corners=False)
    iou_score: torch.Tensor  # (B, 1)
    object_score: torch.Tensor  # (B, 1)
    tokens: torch.Tensor | None = None  # all_tokens: every decoder token's low-res logits (B, 4, S/4, S/4)
    token_iou: torch.Tensor | None = None  # all_tokens: their IoU scores (B, 4)


def episode_forward(
    model: torch.nn.Module,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_images: torch.Tensor,
    all_tokens: bool = False,
) -> EpisodeOutput:
    """FS-SAM2's episode for B episodes of K supports, differentiable (the training forward).

    support_images (B, K, 3, S, S) and query_images (B, 3, S, S) are normalised; support_masks (B, K, S, S)
    are {0, 1}. The B*K supports go through `forward_image` and the memory encoder as one batch; each
    episode's K memories are concatenated support by support, with the first support's position
    encoding repeated K times. A single query (1, 3, S, S) is encoded once and shared by the B episodes
    (N-way: one episode per class). `all_tokens` (training the whole model) also returns every decoder token's
    output; the episode's mask is then token 0's, as in training mode without it.
    """
    b, k = support_images.shape[:2]
    size = model.image_size
    n = model.num_feature_levels
    support = model.forward_image(support_images.flatten(0, 1))
    masks = support_masks.flatten(0, 1)[:, None].float()
    mem = model.memory_encoder(support["backbone_fpn"][-n:][-1], masks * 20.0 - 10.0, skip_mask_sigmoid=True)
    feats = mem["vision_features"]  # (B*K, C, h, w)
    c = feats.shape[1]
    memory = feats.reshape(b, k, c, -1).permute(1, 3, 0, 2).reshape(-1, b, c)  # (K*h*w, B, C)
    memory_pos = mem["vision_pos_enc"][0].reshape(b, k, c, -1)[:, 0].permute(2, 0, 1).repeat(k, 1, 1)

    if query_images.shape[0] not in (1, b):
        raise ValueError(f"{query_images.shape[0]} queries for {b} episodes: give one per episode or one shared")
    query = model.forward_image(query_images)
    feats = [f.expand(b, -1, -1, -1) for f in query["backbone_fpn"][-n:]]
    pos = [p.expand(b, -1, -1, -1) for p in query["vision_pos_enc"][-n:]]
    pix_feat = feats[-1]
    conditioned = model.memory_attention(
        curr=pix_feat.flatten(2).permute(2, 0, 1),
        curr_pos=pos[-1].flatten(2).permute(2, 0, 1),
        memory=memory,
        memory_pos=memory_pos,
        num_obj_ptr_tokens=0,
    )
    conditioned = conditioned.permute(1, 2, 0).reshape(pix_feat.shape)
    points, labels = padding_point()
    batch_points = (points.to(pix_feat.device).expand(b, -1, -1), labels.to(pix_feat.device).expand(b, -1))
    decode = decode_all_masks if all_tokens else decode_single_mask
    low, ious, obj = decode(
        model.sam_prompt_encoder, model.sam_mask_decoder, conditioned, batch_points, list(feats[:-1])
    )
    tokens, token_iou = (low.float(), ious.float()) if all_tokens else (None, None)
    low, ious = (low[:, :1].float(), ious[:, :1]) if all_tokens else (low.float(), ious)
    full = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
    return EpisodeOutput(low, full, ious.float(), obj.float(), tokens, token_iou)


@torch.no_grad()
def reference_episode(
    model: torch.nn.Module, supports: Sequence[tuple[ImageLike, ImageLike]], query: ImageLike
) -> ReferenceResult:
    """Run one K-shot episode (K = len(supports) >= 1) through sam2's modules, on the model's device."""
    return reference_ways(model, [supports], query)[0]


@torch.no_grad()
def reference_ways(
    model: torch.nn.Module, classes: Sequence[Sequence[tuple[ImageLike, ImageLike]]], query: ImageLike
) -> list[ReferenceResult]:
    """N-way: one K-shot episode per class (the same K >= 1 for all), the query encoded once; a result per class."""
    if not classes or not all(classes):
        raise ValueError("an episode needs at least one class and one support per class")
    if len({len(s) for s in classes}) != 1:
        raise ValueError(f"every class needs the same number of supports, got {[len(s) for s in classes]}")
    size = model.image_size
    device = next(model.parameters()).device
    images = torch.stack([torch.cat([image_tensor(image, size) for image, _ in s]) for s in classes]).to(device)
    masks = torch.stack([torch.cat([mask_tensor(mask, size)[:, 0] for _, mask in s]) for s in classes]).to(device)
    rgb = load_image(query)
    out = episode_forward(model, images, masks, image_tensor(rgb, size).to(device))
    logits = F.interpolate(out.logits.float(), rgb.shape[:2], mode="bilinear", align_corners=True)[:, 0].cpu().numpy()
    return [
        ReferenceResult(
            logits[i],
            logits[i] > 0,
            out.low_res_logits[i, 0].float().cpu().numpy(),
            float(out.iou_score[i].reshape(-1)[0]),
            float(out.object_score[i].reshape(-1)[0]),
        )
        for i in range(len(classes))
    ]
