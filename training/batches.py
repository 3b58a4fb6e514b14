"""Training batches: episodes resized to the model size, augmented on the device, and the loss.

Resizing is FS-SAM2's: Pillow bicubic for images, torch `nearest` for masks. Augmentation (kornia, each
image of an episode independently, as FS-SAM2's torchvision pipeline): rotation within +-10 degrees, 5x5
Gaussian blur (sigma 0.1-2), horizontal flip with p=0.5; masks follow the geometry with nearest sampling.
Loss: BCE-with-logits + Dice (1:1) on the SxS logits, IGNORE pixels excluded from both. Training the whole model
(`decoder_loss`) supervises every decoder token as SAM2's training does: at inference SAM2's decoder falls back from
an unstable single-mask output (token 0) to the multimask token with the highest IoU score, so those tokens and the
IoU head must have learned too.
"""

from __future__ import annotations

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fssam2_export.reference import IMAGENET_MEAN, IMAGENET_STD

from .datasets import IGNORE, FewShotDataset


def _image(array: np.ndarray, size: int) -> torch.Tensor:
    pil = Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def _mask(array: np.ndarray, size: int) -> torch.Tensor:
    m = torch.from_numpy(array.astype(np.float32))[None, None]
    return F.interpolate(m, (size, size), mode="nearest")[0, 0].to(torch.uint8)


class TrainEpisodes(torch.utils.data.Dataset):
    """Episode i of the current epoch as uint8 tensors at size S (batched by a DataLoader)."""

    def __init__(self, dataset: FewShotDataset, image_size: int):
        self.dataset, self.size, self.epoch = dataset, image_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ep = self.dataset.episode(index, self.epoch)
        return {
            "support_images": torch.stack([_image(im, self.size) for im, _ in ep.supports]),  # (K, 3, S, S)
            "support_masks": torch.stack([_mask(m, self.size) for _, m in ep.supports]),  # (K, S, S)
            "query_image": _image(ep.query, self.size),  # (3, S, S)
            "query_mask": _mask(ep.query_mask, self.size),  # (S, S), IGNORE kept
            "class_id": torch.tensor(ep.spec.class_id),
        }


class Augment:
    """Per-image random rotation, blur and flip of (N, 3, S, S) [0, 1] images with their (N, 1, S, S) masks."""

    def __init__(self, degrees: float = 10.0, blur_sigma: tuple[float, float] = (0.1, 2.0), flip_p: float = 0.5):
        self.pipeline = K.AugmentationSequential(
            K.RandomRotation(degrees, p=1.0),
            K.RandomGaussianBlur((5, 5), blur_sigma, p=1.0),
            K.RandomHorizontalFlip(p=flip_p),
            data_keys=["input", "mask"],
        )

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline(images, masks)


def prepare(batch: dict[str, torch.Tensor], device: torch.device, augment: Augment | None) -> tuple[torch.Tensor, ...]:
    """uint8 batch -> (support_images (B,K,3,S,S) normalised, support_masks (B,K,S,S), query (B,3,S,S),
    query_mask (B,S,S) uint8), augmented if `augment`."""
    si, sm = batch["support_images"].to(device), batch["support_masks"].to(device)
    qi, qm = batch["query_image"].to(device), batch["query_mask"].to(device)
    b, k, _, s, _ = si.shape
    images = torch.cat([si.flatten(0, 1), qi]).float() / 255.0
    masks = torch.cat([sm.flatten(0, 1), qm])[:, None].float()
    if augment is not None:
        images, masks = augment(images, masks)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    images = (images - mean) / std
    masks = masks[:, 0].round()
    return (
        images[: b * k].view(b, k, 3, s, s),
        masks[: b * k].view(b, k, s, s),
        images[b * k :],
        masks[b * k :].to(torch.uint8),
    )


def episode_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(BCE + Dice, BCE, Dice) of (B, 1, S, S) logits against a (B, S, S) {0, 1, IGNORE} mask.

    BCE: mean over the batch's valid pixels. Dice: 1 - (2|P.T| + 1) / (|P| + |T| + 1) per episode, averaged.
    """
    x = logits[:, 0].float()
    valid = (target != IGNORE).float()
    t = (target == 1).float()
    bce = (F.binary_cross_entropy_with_logits(x, t, reduction="none") * valid).sum() / valid.sum().clamp_min(1.0)
    p = torch.sigmoid(x) * valid
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return bce + dice.mean(), bce, dice.mean()


def _per_episode(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) BCE + Dice of (B, S, S) logits against a (B, S, S) {0, 1, IGNORE} mask, per episode."""
    x = logits.float()
    valid = (target != IGNORE).float()
    t = (target == 1).float()
    bce = (F.binary_cross_entropy_with_logits(x, t, reduction="none") * valid).sum((1, 2)) / valid.sum(
        (1, 2)
    ).clamp_min(1.0)
    p = torch.sigmoid(x) * valid
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return bce + dice


def decoder_loss(
    logits: torch.Tensor, tokens: torch.Tensor, token_iou: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, BCE, Dice) of a whole-model training step, SAM2's decoder supervision: `episode_loss` on token 0's
    (B, 1, S, S) logits, plus the lowest BCE + Dice among the multimask tokens 1-3 per episode (SAM's
    multiple-output loss), plus the MSE between every token's IoU score (B, 4) and its mask's IoU with the target.
    `tokens` (B, 4, h, w) are the low-res logits; BCE and Dice returned are token 0's."""
    single, bce, dice = episode_loss(logits, target)
    size = target.shape[-2:]
    full = F.interpolate(tokens.float(), size, mode="bilinear", align_corners=False)  # (B, 4, S, S)
    multi = torch.stack([_per_episode(full[:, k], target) for k in range(1, full.shape[1])], 1).min(1).values
    valid, t = target != IGNORE, target == 1
    with torch.no_grad():
        pred = full > 0
        inter = (pred & t[:, None] & valid[:, None]).sum((2, 3)).float()
        union = ((pred | t[:, None]) & valid[:, None]).sum((2, 3)).float()
        iou = inter / union.clamp_min(1.0)
    iou_loss = F.mse_loss(token_iou.float(), iou)
    return single + multi.mean() + iou_loss, bce, dice
