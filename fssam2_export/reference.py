"""PyTorch reference episode: sam2's own modules called in FS-SAM2's order (its `sam2_pred.py`).

Supports: `forward_image`, then the memory encoder on the ground-truth mask as logits (mask*20-10,
sigmoid skipped); their memories are concatenated (no temporal encoding, no object pointers).
Query: `forward_image`, memory attention over that memory, prompt encoder with one padding point
(label -1), mask decoder with multimask_output=False; low-res logits upsampled bilinearly to the model
size, then to the query's size (align_corners=True, as FS-SAM2's test with original image size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from runtime.image import ImageLike, load_image, load_mask

from .graphs import padding_point

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


@torch.no_grad()
def reference_episode(model: torch.nn.Module, supports: Sequence[tuple[ImageLike, ImageLike]], query: ImageLike) -> ReferenceResult:
    """Run one K-shot episode (K = len(supports) >= 1) through sam2's modules."""
    if not supports:
        raise ValueError("an episode needs at least one support")
    size = model.image_size
    n = model.num_feature_levels
    memories, memory_pos = [], None
    for image, mask in supports:
        backbone = model.forward_image(image_tensor(image, size))
        pix_feat = backbone["backbone_fpn"][-n:][-1]
        mem = model.memory_encoder(pix_feat, mask_tensor(mask, size) * 20.0 - 10.0, skip_mask_sigmoid=True)
        memories.append(mem["vision_features"].flatten(2).permute(2, 0, 1))
        if memory_pos is None:  # FS-SAM2 reuses the first support's encoding for all
            memory_pos = mem["vision_pos_enc"][0].flatten(2).permute(2, 0, 1)

    rgb = load_image(query)
    backbone = model.forward_image(image_tensor(rgb, size))
    feats, pos = backbone["backbone_fpn"][-n:], backbone["vision_pos_enc"][-n:]
    pix_feat = feats[-1]
    conditioned = model.memory_attention(
        curr=pix_feat.flatten(2).permute(2, 0, 1),
        curr_pos=pos[-1].flatten(2).permute(2, 0, 1),
        memory=torch.cat(memories, dim=0),
        memory_pos=torch.cat([memory_pos] * len(memories), dim=0),
        num_obj_ptr_tokens=0,
    )
    conditioned = conditioned.permute(1, 2, 0).view(*pix_feat.shape)
    sparse, dense = model.sam_prompt_encoder(points=padding_point(), boxes=None, masks=None)
    low, ious, _, obj = model.sam_mask_decoder(
        image_embeddings=conditioned,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=feats[:-1],
    )
    full = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
    logits = F.interpolate(full, rgb.shape[:2], mode="bilinear", align_corners=True)[0, 0].numpy()
    return ReferenceResult(logits, logits > 0, low[0, 0].numpy(), float(ious.reshape(-1)[0]), float(obj.reshape(-1)[0]))
