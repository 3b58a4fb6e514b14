"""peft LoRA on SAM2 (FS-SAM2's configuration), the loss, and a few training steps on a fixed batch."""

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from fssam2_export.models import build_model
from fssam2_export.reference import episode_forward, reference_episode
from training.batches import Augment, TrainEpisodes, episode_loss, prepare
from training.datasets import IGNORE, build_dataset
from training.lora import DEFAULT_LORA, add_lora, merge_lora, parse_lora_overrides, trainable_table

SIZE = 64


def _model():
    return build_model("sam2.1_hiera_t", random_init=True, seed=0, image_size=SIZE).model


@pytest.fixture(scope="module")
def fixed_batch():
    ds = build_dataset("synthetic", None, 0, "trn", shots=1, seed=0)
    return default_collate([TrainEpisodes(ds, SIZE)[i] for i in range(2)])


def test_fs_sam2_adapters_only_are_trainable():
    sam = _model()
    add_lora(sam, DEFAULT_LORA)
    rows = {name: (t, n) for name, t, n in trainable_table(sam)}
    assert rows["memory_encoder"][0] == 32 * (256 + 64)  # r=32 on the 1x1 out_proj conv, 256 -> 64
    assert rows["image_encoder"][0] > 0 and rows["memory_attention"][0] > 0
    assert all(t == 0 for name, (t, _) in rows.items() if name not in DEFAULT_LORA)
    assert all("lora_" in n for n, p in sam.named_parameters() if p.requires_grad)
    ie = sam.image_encoder.peft_config["default"]
    assert (ie.r, ie.lora_alpha, ie.lora_dropout, set(ie.target_modules)) == (4, 16, 0.1, {"qkv", "proj"})
    ma = sam.memory_attention.peft_config["default"]
    assert (ma.r, set(ma.target_modules)) == (32, {"q_proj", "k_proj", "v_proj", "out_proj"})


def test_lora_overrides():
    specs = parse_lora_overrides(["memory_attention:r=8,alpha=4,targets=q_proj+v_proj", "memory_encoder:off"])
    assert specs["memory_attention"].r == 8 and specs["memory_attention"].targets == ("q_proj", "v_proj")
    assert "memory_encoder" not in specs and specs["image_encoder"] == DEFAULT_LORA["image_encoder"]
    for bad in ("decoder:r=4", "image_encoder:rank=4", "image_encoder"):
        with pytest.raises(ValueError):
            parse_lora_overrides([bad])


def test_loss_excludes_ignore_pixels():
    logits = torch.randn(2, 1, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8), dtype=torch.uint8)
    target[:, :2] = IGNORE
    loss, bce, dice = episode_loss(logits, target)
    changed = logits.clone()
    changed[:, :, :2] = 50.0  # anything under IGNORE
    assert torch.allclose(episode_loss(changed, target)[0], loss)
    valid = target != IGNORE
    t = (target == 1).float()
    ref_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0][valid], t[valid])
    assert torch.allclose(bce, ref_bce, atol=1e-6)
    p = torch.sigmoid(logits[:, 0]) * valid
    ref_dice = (1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + (t * valid).sum((1, 2)) + 1)).mean()
    assert torch.allclose(dice, ref_dice, atol=1e-6)


def test_augmentation_keeps_mask_labels(fixed_batch):
    torch.manual_seed(0)
    si, sm, qi, qm = prepare(fixed_batch, torch.device("cpu"), Augment())
    assert si.shape == (2, 1, 3, SIZE, SIZE) and qm.dtype == torch.uint8
    assert set(torch.unique(sm).tolist()) <= {0.0, 1.0} and set(torch.unique(qm).tolist()) <= {0, 1, IGNORE}
    plain = prepare(fixed_batch, torch.device("cpu"), None)
    assert not torch.allclose(plain[2], qi)


def test_few_steps_lower_the_loss_and_change_only_lora(fixed_batch):
    """AdamW on one fixed batch, dropout off so the objective is deterministic: the loss falls step by step."""
    sam = _model()
    add_lora(sam, DEFAULT_LORA)
    for m in sam.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    sam.train()
    si, sm, qi, qm = prepare(fixed_batch, torch.device("cpu"), None)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-6)
    losses = []
    for _ in range(5):
        loss = episode_loss(episode_forward(sam, si, sm, qi).logits, qm)[0]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        losses.append(episode_loss(episode_forward(sam, si, sm, qi).logits, qm)[0].item())
    after = sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.03, losses  # 1.671 -> 1.585 here
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)


def test_merged_model_equals_peft_model(tmp_path, record_metric):
    """merge_and_unload leaves sam2's own modules and keys, and the same episode output (max-abs <= 1e-5)."""
    from runtime.tools.synthetic import write_episode

    sam = _model()
    base_keys = set(sam.state_dict())
    base_episode = write_episode(tmp_path, shots=2, seed=3)
    supports = [(str(i), str(m)) for i, m in base_episode.supports]
    plain = reference_episode(sam, supports, base_episode.query).logits
    torch.manual_seed(1)
    add_lora(sam, DEFAULT_LORA)
    sam.eval()  # fresh lora_dropout modules start in training mode
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "lora_B" in name:  # fresh adapters are a no-op (B = 0); make them matter
                p.normal_(0, 0.02)
    peft_out = reference_episode(sam, supports, base_episode.query).logits
    merge_lora(sam)
    merged_out = reference_episode(sam, supports, base_episode.query).logits
    assert set(sam.state_dict()) == base_keys
    assert np.abs(peft_out - plain).max() > 1e-2, "adapters must change the output for the check to mean anything"
    err = float(np.abs(merged_out - peft_out).max())
    record_metric("merge parity logits max-abs", err)
    assert err <= 1e-5
