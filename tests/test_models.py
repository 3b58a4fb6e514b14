"""Model building: all configs, explicit weight sources, strict checkpoint loading."""

import json

import pytest
import torch

from fssam2_export.models import (
    MODEL_CONFIGS,
    TRAINING_RECORD_SUFFIX,
    CheckpointError,
    build_model,
    hydra_overrides,
    save_checkpoint,
)


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_every_config_builds_at_small_size(name):
    loaded = build_model(name, random_init=True, seed=0, image_size=128)
    sam = loaded.model
    assert sam.image_size == 128 and sam.sam_image_embedding_size == 8
    for layer in sam.memory_attention.layers:  # RoPE tables sized for 8x8, not recomputed in forward
        assert layer.self_attn.freqs_cis.shape[0] == 64
    assert sam.sam_mask_decoder.dynamic_multimask_via_stability


def test_sizes_differ():
    counts = {
        n: sum(p.numel() for p in build_model(n, random_init=True, seed=0, image_size=128).model.parameters())
        for n in ("sam2.1_hiera_t", "sam2.1_hiera_s")
    }
    assert counts["sam2.1_hiera_t"] < counts["sam2.1_hiera_s"]


def test_random_init_is_seeded():
    a = build_model("sam2.1_hiera_t", random_init=True, seed=3, image_size=128).model.state_dict()
    b = build_model("sam2.1_hiera_t", random_init=True, seed=3, image_size=128).model.state_dict()
    c = build_model("sam2.1_hiera_t", random_init=True, seed=4, image_size=128).model.state_dict()
    key = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one weight source"),
        ({"random_init": True, "checkpoint": "x.pt", "seed": 0}, "exactly one weight source"),
        ({"random_init": True}, "explicit seed"),
        ({"random_init": True, "seed": 0, "image_size": 1000}, "multiple of 32"),
    ],
)
def test_weight_source_and_size_are_explicit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("sam2.1_hiera_t", **kwargs)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("sam3_hiera_t", random_init=True, seed=0)


def test_official_checkpoint_roundtrip(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model.model, path)
    loaded = build_model("sam2.1_hiera_t", checkpoint=path, image_size=tiny_model.image_size)
    assert (
        not loaded.source.random_init and loaded.source.checkpoint_sha256 and len(loaded.source.checkpoint_sha256) == 64
    )
    for k, v in tiny_model.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_checkpoint_of_another_size_is_refused(tmp_path):
    small = build_model("sam2.1_hiera_s", random_init=True, seed=0, image_size=128)
    path = tmp_path / "small.pt"
    save_checkpoint(small.model, path)
    with pytest.raises(CheckpointError, match="another model size"):
        build_model("sam2.1_hiera_t", checkpoint=path, image_size=128)


def test_missing_unexpected_and_foreign_checkpoints(tiny_model, tmp_path):
    sd = dict(tiny_model.model.state_dict())
    sd.pop("no_mem_embed")
    sd["adapter.lora_A"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: no_mem_embed(.|\n)*unexpected keys: adapter.lora_A"):
        build_model("sam2.1_hiera_t", checkpoint=tmp_path / "bad.pt", image_size=128)
    torch.save(tiny_model.model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="checkpoint format"):
        build_model("sam2.1_hiera_t", checkpoint=tmp_path / "plain.pt", image_size=128)
    with pytest.raises(FileNotFoundError):
        build_model("sam2.1_hiera_t", checkpoint=tmp_path / "absent.pt", image_size=128)


def test_overrides_size_rope_tables():
    assert "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]" in hydra_overrides(512)


def test_stability_fallback_follows_the_training_record(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model.model, path)
    record = path.with_name(path.name + TRAINING_RECORD_SUFFIX)
    for written, override, expected in [(None, None, True), (False, None, False), (False, True, True)]:
        if written is not None:
            record.write_text(json.dumps({"inference": {"stability_fallback": written}}))
        loaded = build_model(
            "sam2.1_hiera_t", checkpoint=path, image_size=tiny_model.image_size, stability_fallback=override
        )
        assert loaded.source.stability_fallback is expected
        assert loaded.model.sam_mask_decoder.dynamic_multimask_via_stability is expected
