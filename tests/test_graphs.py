"""Each exported graph (run by onnxruntime) against sam2's own PyTorch module on the same inputs."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fssam2_export.graphs import padding_point
from fssam2_export.reference import image_tensor, mask_tensor
from runtime.engine.manifest import GRAPH_NAMES, load_manifest

BOUND = 1e-4  # max-abs, FP32


@pytest.fixture(scope="module")
def sessions(artifacts):
    return {
        n: ort.InferenceSession(str(artifacts / f"{n}.onnx"), providers=["CPUExecutionProvider"]) for n in GRAPH_NAMES
    }


@pytest.fixture(scope="module")
def torch_feats(tiny_model, episode):
    """sam2 features of the query and of each support (image tensor, backbone outputs, memory)."""
    sam, s = tiny_model.model, tiny_model.image_size
    out = []
    with torch.no_grad():
        for image, mask in [*episode.supports, (episode.query, episode.query_mask)]:
            x = image_tensor(image, s)
            b = sam.forward_image(x)
            logits = mask_tensor(mask, s) * 20.0 - 10.0
            mem = sam.memory_encoder(b["backbone_fpn"][-1], logits, skip_mask_sigmoid=True)
            out.append(dict(x=x, fpn=b["backbone_fpn"][-3:], pos=b["vision_pos_enc"][-1], logits=logits, mem=mem))
    return out


def _maxabs(a, b) -> float:
    return float(np.abs(np.asarray(a) - b.detach().numpy()).max())


def test_image_encoder(sessions, torch_feats, record_metric):
    f = torch_feats[-1]
    got = sessions["image_encoder"].run(None, {"image": f["x"].numpy()})
    err = max(_maxabs(g, t) for g, t in zip(got, [f["fpn"][0], f["fpn"][1], f["fpn"][2], f["pos"]]))
    record_metric("graph max-abs image_encoder", err)
    assert err < BOUND


def test_memory_encoder(sessions, torch_feats, record_metric):
    f = torch_feats[0]
    mem, pos = sessions["memory_encoder"].run(
        None, {"image_embed": f["fpn"][2].numpy(), "mask_logits": f["logits"].numpy()}
    )
    err = max(
        _maxabs(mem, f["mem"]["vision_features"].flatten(2).transpose(1, 2)),
        _maxabs(pos, f["mem"]["vision_pos_enc"][0].flatten(2).transpose(1, 2)),
    )
    record_metric("graph max-abs memory_encoder", err)
    assert err < BOUND


@pytest.mark.parametrize("k", [1, 5])
def test_memory_attention_dynamic_memory(sessions, torch_feats, tiny_model, record_metric, k):
    q = torch_feats[-1]
    mems = [f["mem"]["vision_features"].flatten(2).permute(2, 0, 1) for f in torch_feats[:k]]
    pos = torch_feats[0]["mem"]["vision_pos_enc"][0].flatten(2).permute(2, 0, 1)
    memory, memory_pos = torch.cat(mems), torch.cat([pos] * k)
    with torch.no_grad():  # sam2's own memory attention, complex-number RoPE
        expected = (
            tiny_model.model.memory_attention(
                curr=q["fpn"][2].flatten(2).permute(2, 0, 1),
                curr_pos=q["pos"].flatten(2).permute(2, 0, 1),
                memory=memory,
                memory_pos=memory_pos,
                num_obj_ptr_tokens=0,
            )
            .permute(1, 2, 0)
            .reshape(q["fpn"][2].shape)
        )
    (got,) = sessions["memory_attention"].run(
        None,
        {
            "image_embed": q["fpn"][2].numpy(),
            "image_pos": q["pos"].numpy(),
            "memory": memory.transpose(0, 1).numpy(),
            "memory_pos": memory_pos.transpose(0, 1).numpy(),
        },
    )
    err = _maxabs(got, expected)
    record_metric(f"graph max-abs memory_attention K={k}", err)
    assert err < BOUND


def test_mask_decoder(sessions, torch_feats, tiny_model, record_metric):
    sam, q = tiny_model.model, torch_feats[-1]
    embed = q["fpn"][2] + 0.1 * torch.randn_like(q["fpn"][2])
    with torch.no_grad():
        sparse, dense = sam.sam_prompt_encoder(points=padding_point(), boxes=None, masks=None)
        low, iou, _, obj = sam.sam_mask_decoder(
            image_embeddings=embed,
            image_pe=sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=q["fpn"][:2],
        )
    got = sessions["mask_decoder"].run(
        None,
        {
            "conditioned_embed": embed.numpy(),
            "high_res_feat0": q["fpn"][0].numpy(),
            "high_res_feat1": q["fpn"][1].numpy(),
        },
    )
    err = max(_maxabs(g, t) for g, t in zip(got, [low, iou, obj]))
    record_metric("graph max-abs mask_decoder", err)
    assert err < BOUND


def test_manifest_describes_the_graphs(artifacts, sessions):
    m = load_manifest(artifacts)
    for name, sess in sessions.items():
        spec = m.graphs[name]
        assert [t.name for t in spec.inputs] == [i.name for i in sess.get_inputs()]
        assert [t.name for t in spec.outputs] == [o.name for o in sess.get_outputs()]
        for t, i in zip(spec.inputs, sess.get_inputs()):
            assert t.shape == i.shape and t.dtype == "float32"
    mem_in = {t.name: t.shape for t in m.graphs["memory_attention"].inputs}
    assert mem_in["memory"] == [1, "num_memory_tokens", 64]
    assert m.episode.tokens_per_support == (m.preprocess.image_size // 16) ** 2
    assert m.model.random_init and m.model.seed == 0 and m.model.checkpoint_sha256 is None
    assert {"torch", "sam2", "onnx", "opset"} <= set(m.tools)
