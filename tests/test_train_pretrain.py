"""Pretraining every parameter (`fssam2-train fit --train all`) on the class-agnostic `shapes-instances` episodes,
its exact resume, merge into an fp16 safetensors checkpoint that loads strictly, and LoRA meta-training on top."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fssam2_export.models import CheckpointError, build_model
from training import fit as fit_module
from training.cli import main
from training.fit import WarmupCosine, use_amp

SIZE = 64
COMMON = ["--image-size", str(SIZE), "--batch-size", "1", "--workers", "0", "--quiet", "--model", "sam2.1_hiera_t"]
PRETRAIN = ["fit", "--train", "all", "--dataset", "shapes-instances", "--random-init", *COMMON]
PRETRAIN += ["--steps", "3", "--val-every", "3", "--val-episodes", "2", "--lr", "1e-3", "--warmup", "2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(PRETRAIN + ["--out", str(out)]) == 0
    return out


def test_every_parameter_trains_and_the_run_keeps_whole_weights(pretrained):
    events = [json.loads(line) for line in (pretrained / "log.jsonl").read_text().splitlines()]
    start = events[0]
    assert start["trainable"]["image_encoder"] > 0 and start["trainable"]["sam_mask_decoder"] > 0
    lrs = [e["lr"] for e in events if e["event"] == "train"]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])  # warm-up over 2 steps, then cosine from the top
    base = build_model("sam2.1_hiera_t", random_init=True, seed=0, image_size=SIZE).model.state_dict()
    last = load_file(pretrained / "last" / "model.safetensors")
    assert set(last) == set(base)
    key = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert not torch.equal(last[key], base[key])  # the image encoder learned, not only adapters
    assert (pretrained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (pretrained / "last" / "adapters").exists()


def test_resume_of_a_full_run_is_exact(pretrained, tmp_path):
    out = tmp_path / "resumed"
    assert main(PRETRAIN + ["--out", str(out), "--stop-after", "2"]) == 0
    assert main(["fit", "--resume", "--out", str(out), "--quiet"]) == 0
    a, b = load_file(pretrained / "last" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_merge_to_fp16_safetensors_and_lora_on_top(pretrained, tmp_path):
    ckpt = tmp_path / "base.safetensors"
    assert main(["merge", "--run", str(pretrained), "--which", "last", "--out", str(ckpt), "--dtype", "fp16"]) == 0
    stored = load_file(ckpt)
    weights = load_file(pretrained / "last" / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert all(torch.equal(stored[k], weights[k].to(stored[k].dtype)) for k in weights)
    record = json.loads((tmp_path / "base.safetensors.fssam2.json").read_text())
    assert record["dtype"] == "fp16" and record["adapters"] == {} and record["run"]["config"]["train"] == "all"

    loaded = build_model("sam2.1_hiera_t", checkpoint=ckpt, image_size=SIZE)  # strict, widened to fp32
    key = "memory_attention.layers.0.cross_attn_image.q_proj.weight"
    assert loaded.model.state_dict()[key].dtype == torch.float32
    assert torch.equal(loaded.model.state_dict()[key], stored[key].float())
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build_model("sam2.1_hiera_s", checkpoint=ckpt, image_size=SIZE)

    lora = tmp_path / "lora"
    args = ["fit", "--dataset", "shapes", "--fold", "0", "--checkpoint", str(ckpt), *COMMON]
    assert main(args + ["--steps", "1", "--val-episodes", "2", "--out", str(lora)]) == 0
    assert (lora / "best" / "adapters" / "memory_attention" / "adapter_model.safetensors").is_file()
    config = json.loads((lora / "config.json").read_text())
    assert config["base"]["checkpoint_sha256"] == record["checkpoint_sha256"] and config["train"] == "lora"
    assert main(["merge", "--run", str(pretrained), "--out", str(tmp_path / "x.bin")]) == 2


def test_warmup_then_cosine():
    f = WarmupCosine(10, 110)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert WarmupCosine(0, 10)(0) == 1.0


def test_bf16_autocast_on_cpus_that_have_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(fit_module, "cpu_has_bf16", lambda: True)
    assert use_amp("auto", cpu) and not use_amp("auto", cpu, cpu=False) and not use_amp("off", cpu)
    monkeypatch.setattr(fit_module, "cpu_has_bf16", lambda: False)
    assert not use_amp("auto", cpu) and use_amp("bf16", cpu)


def test_decoder_loss_supervises_every_token():
    """Token 0 as `episode_loss`; the best multimask token counts (a perfect one zeroes that part); the IoU head is
    pulled to each token's real IoU (a flipped token has IoU 0)."""
    from training.batches import _per_episode, decoder_loss, episode_loss

    target = torch.zeros(2, 16, 16, dtype=torch.uint8)
    target[:, 4:12, 4:12] = 1
    good = (target.float() * 2 - 1)[:, None] * 30  # confident and right
    tokens = torch.cat([good, -good, torch.zeros_like(good), good], 1)  # token 3 perfect, token 1 flipped
    truth_iou = torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 2)  # token 2 (logits 0) predicts nothing: IoU 0
    loss, bce, dice = decoder_loss(good, tokens, truth_iou, target)
    single = episode_loss(good, target)[0]
    assert torch.allclose(loss, single + _per_episode(good[:, 0], target).mean(), atol=1e-5)
    assert float(_per_episode(good[:, 0], target).max()) < 0.05
    worse = decoder_loss(good, torch.cat([good, -good, torch.zeros_like(good), -good], 1), truth_iou, target)[0]
    assert worse > loss + 0.5  # without a good multimask token the loss rises
    wrong_iou = decoder_loss(good, tokens, 1 - truth_iou, target)[0]
    assert wrong_iou > loss + 0.5


@torch.no_grad()
def test_all_tokens_forward_keeps_token_zero(tiny_model):
    from fssam2_export.reference import episode_forward

    sam = tiny_model.model
    x = torch.randn(1, 1, 3, tiny_model.image_size, tiny_model.image_size)
    m = (torch.rand(1, 1, tiny_model.image_size, tiny_model.image_size) > 0.5).float()
    q = torch.randn(1, 3, tiny_model.image_size, tiny_model.image_size)
    sam.train()  # token 0 is the training-mode output (no stability fallback); dropout seeded alike
    try:
        torch.manual_seed(0)
        plain = episode_forward(sam, x, m, q)
        torch.manual_seed(0)
        full = episode_forward(sam, x, m, q, all_tokens=True)
    finally:
        sam.eval()
    assert full.tokens.shape[1] == 4 and full.token_iou.shape == (1, 4) and plain.tokens is None
    assert torch.allclose(full.logits, plain.logits, atol=1e-5)
    assert not torch.allclose(full.tokens[:, 1], full.tokens[:, 0], atol=1e-3)
