"""Dependency graph + coupled pruning + compaction on every model family: the compacted
model's outputs equal the pruned model's, and each layer keeps exactly what its mask kept."""

import pytest
import torch
from torch import nn

import spruce
from spruce.compact.core import relative_error, run
from spruce.masks import get_mask, masked_layers
from spruce.structure.graph import build
from spruce.structure.groups import coupled_groups
from tests.structure_models import ConvNeXt, MobileNet, randomize_norms

transformers = pytest.importorskip("transformers")


def roundtrip(model: nn.Module, x, density: float = 0.5, **kw) -> nn.Module:
    """Prune coupled, compact, and check the invariants; returns the compacted model."""
    model.eval()
    report = spruce.prune(model, "channel", density, scope="coupled", example_input=x, **kw)
    small = spruce.compact(model, x)
    rep = small.spruce_compaction
    assert rep.compacted, [r.reason for r in rep.rows]
    for ref, out in zip(run(model, x), run(small, x), strict=True):
        assert relative_error(ref, out) < 1e-5
    for name, layer in masked_layers(model).items():  # each weight keeps what its mask kept
        kept = int(get_mask(layer).sum())
        assert small.get_submodule(name).weight.numel() == kept, name
    assert rep.params_after < rep.params_before
    groups = report.extra["groups"]
    for g in groups:  # exact unit counts: round(d · units), at least one
        if g["reason"] is None:
            assert g["kept"] == max(1, int(density * g["units"] + 0.5)), g
    return small


def kinds(model, x):
    return {g.kind for g in coupled_groups(build(model, x)) if not g.pinned}


IMG = torch.randn(2, 3, 32, 32)
SMALL = torch.randn(1, 3, 16, 16)  # the CIFAR zoo models take any size


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50", "shufflenet_v2", "vit"])
def test_zoo_image_models(name):
    model = spruce.zoo.build(name, "cifar10", seed=0)
    torch.manual_seed(1)
    randomize_norms(model)
    roundtrip(model, IMG if name in ("vit", "vgg16") else SMALL)


class FlattenHead(nn.Module):
    """VGG's ImageNet head: [B, C, 2, 2] flattened into a Linear reads each channel 4 times."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(y, 1))))


def test_flatten_into_linear_removes_every_spatial_column():
    small = roundtrip(FlattenHead(), SMALL)
    assert small.conv.out_channels == 4 and small.fc1.in_features == 16


def test_resnet_stream_is_one_group_per_stage():
    model = spruce.zoo.build("resnet18", "cifar10", seed=0)
    groups = coupled_groups(build(model, SMALL))
    streams = [g for g in groups if g.kind == "stream"]
    assert [len(g.units) for g in streams] == [64, 128, 256, 512]
    first = {n for n, _ in streams[0].members}
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer1.1.conv1.weight",
            "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"} <= first


def test_inner_channels_only_keeps_the_stream():
    model = spruce.zoo.build("resnet18", "cifar10", seed=0)
    small = roundtrip(model, SMALL, coupled={"stream": False})
    assert small.conv1.out_channels == 64 and small.layer1[0].conv1.out_channels == 32
    assert small.fc.in_features == 512


@pytest.mark.parametrize("v3", [False, True])
def test_mobilenet_depthwise_and_squeeze_excite(v3):
    model = MobileNet(v3=v3)
    randomize_norms(model)
    small = roundtrip(model, IMG)
    dw = small.blocks[1].dw[0]
    assert dw.groups == dw.in_channels == dw.out_channels == small.blocks[1].expand[0].out_channels
    if v3:
        se = small.blocks[1].se
        assert se.fc2.out_channels == dw.out_channels and se.fc1.in_channels == dw.out_channels


def test_convnext_layernorm_keeps_the_stream_whole():
    model = ConvNeXt()
    small = roundtrip(model, IMG)
    assert small.stem.out_channels == 16 and small.blocks[0].gamma.numel() == 16
    assert small.blocks[0].pwconv1.out_features == 32


def tiny(cls, config_cls, **cfg):
    torch.manual_seed(0)
    return cls(config_cls(**cfg))


IDS = torch.randint(0, 100, (2, 8))
TEXT = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}


def test_hf_bert_heads_and_ffn():
    t = transformers
    model = tiny(t.BertModel, t.BertConfig, vocab_size=100, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    assert kinds(model, TEXT) == {"heads", "channels"}
    small = roundtrip(model, TEXT)
    att = small.encoder.layer[0].attention.self
    assert att.num_attention_heads == 2 and att.query.out_features == 16
    assert small.encoder.layer[0].intermediate.dense.out_features == 32


def test_hf_llama_gqa_groups_and_swiglu():
    t = transformers
    model = tiny(t.LlamaForCausalLM, t.LlamaConfig, vocab_size=100, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64)
    groups = [g for g in coupled_groups(build(model, {"input_ids": IDS})) if g.kind == "heads"]
    assert [len(g.units) for g in groups] == [2, 2]  # a KV head with its 2 query heads
    small = roundtrip(model, {"input_ids": IDS})
    attn, mlp = small.model.layers[0].self_attn, small.model.layers[0].mlp
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (16, 8)
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features


def test_hf_vit_and_t5_and_distilbert():
    t = transformers
    vit = tiny(t.ViTForImageClassification, t.ViTConfig, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
    roundtrip(vit, IMG)
    t5 = tiny(t.T5EncoderModel, t.T5Config, vocab_size=100, d_model=32, d_kv=8, d_ff=64,
              num_layers=2, num_heads=4)
    small = roundtrip(t5, {"input_ids": IDS})
    assert small.encoder.block[1].layer[0].SelfAttention.n_heads == 2
    distil = tiny(t.DistilBertModel, t.DistilBertConfig, vocab_size=100, dim=32, n_layers=2,
                  n_heads=4, hidden_dim=64)
    roundtrip(distil, TEXT)


def test_gpt2_conv1d_heads_are_coupled_in_the_graph():
    t = transformers
    model = tiny(t.GPT2Model, t.GPT2Config, vocab_size=100, n_embd=32, n_layer=1, n_head=4)
    groups = coupled_groups(build(model, {"input_ids": IDS}))
    heads = [g for g in groups if g.kind == "heads"]
    assert len(heads) == 1 and len(heads[0].units) == 4
    assert {k for k in heads[0].members} == {("h.0.attn.c_attn.weight", 1),
                                             ("h.0.attn.c_attn.bias", 0),
                                             ("h.0.attn.c_proj.weight", 0)}


def test_masked_model_equals_compacted_after_training_steps():
    """Fine-tune with masks, then compact: no difference."""
    model = MobileNet(v3=True)
    spruce.prune(model, "channel", 0.5, scope="coupled", example_input=IMG)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(2):
        loss = model(IMG).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    small = spruce.compact(model, IMG)
    assert relative_error(run(model, IMG)[0], run(small, IMG)[0]) < 1e-5


def test_bad_coupled_options():
    model = MobileNet()
    with pytest.raises(ValueError, match="unknown coupled option"):
        spruce.prune(model, "channel", 0.5, scope="coupled", example_input=IMG,
                     coupled={"streams": False})
    with pytest.raises(ValueError, match="pattern='channel'"):
        spruce.prune(model, "element", 0.5, scope="coupled", example_input=IMG)
    assert not masked_layers(model)


class OpaqueAttention(nn.Module):
    """Head size from the stream width and a head count spruce does not know the name of:
    removing heads breaks its reshape, so compaction must leave them whole."""

    def __init__(self, dim: int = 16, nh: int = 4):
        super().__init__()
        self.nh = nh
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn1, self.ffn2 = nn.Linear(dim, 32), nn.Linear(32, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.nh, d // self.nh).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ffn2(torch.relu(self.ffn1(x)))


def test_heads_that_cannot_be_removed_are_left_whole_with_the_reason():
    torch.manual_seed(0)
    model, x = OpaqueAttention(), torch.randn(2, 5, 16)
    spruce.prune(model, "channel", 0.5, scope="coupled", example_input=x,
                 coupled={"stream": False})
    small = spruce.compact(model, x)
    rows = {r.kind: r for r in small.spruce_compaction.rows if r.kind != "stream"}
    assert rows["heads"].removed == 0 and "removing heads failed" in rows["heads"].reason
    assert rows["channels"].removed == 16 and small.ffn1.out_features == 16
    assert relative_error(run(model, x)[0], run(small, x)[0]) < 1e-5


def test_gpt2_heads_and_mlp_compact_through_conv1d():
    t = transformers
    model = tiny(t.GPT2Model, t.GPT2Config, vocab_size=100, n_embd=32, n_layer=2, n_head=4)
    small = roundtrip(model, {"input_ids": IDS})
    attn = small.h[0].attn
    assert attn.num_heads == 2 and attn.split_size == 16 and attn.c_attn.nf == 48
    assert small.h[0].mlp.c_fc.nf == 64 == small.h[0].mlp.c_proj.nx
