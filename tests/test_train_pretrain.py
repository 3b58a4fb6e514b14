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
