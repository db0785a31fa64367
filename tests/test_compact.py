"""Producer-side compaction: what is dropped, what is left alone and why, outputs unchanged."""

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

import spruce
from spruce.compact import compact, graph, load_compacted, save_compacted
from spruce.compact.io import layer_shapes, resize_layers
from spruce.masks import attach, get_mask, masked_layers

TAPS = {"patterns": [{"name": "group", "reduce": "sumsq"}]}


def prune_whole_channels(model: nn.Module, density: float = 0.5) -> None:
    """Group-prune every masked Conv2d by whole input channels (all kh·kw taps at once)."""
    for layer in masked_layers(model).values():
        if isinstance(layer, nn.Conv2d):
            w = layer.weight.detach()  # (O, C, kh, kw)
            score = w.pow(2).sum((0, 2, 3))
            kept = torch.zeros(w.shape[1], dtype=torch.bool)
            kept[score.argsort(descending=True)[: max(1, round(density * w.shape[1]))]] = True
            attach(layer, kept[None, :, None, None].expand_as(w).reshape(w.shape[0], -1), TAPS)


def randomize_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


def run(model, x):
    model.eval()
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    return out.logits if hasattr(out, "logits") else out


def rows(model):
    return {r.consumer: r for r in model.spruce_compaction.rows}


class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def conv_bn_conv():
    """conv2 reads channels 0 and 5 through none of its taps, channel 3 through some."""
    net = ConvBnConv()
    randomize_norms(net)
    mask = torch.ones(6, 8, 3, 3, dtype=torch.bool)
    mask[:, [0, 5]] = False
    mask[:, 3, 0] = False
    attach(net.conv2, mask.reshape(6, -1), TAPS)
    return net


@pytest.mark.parametrize("fold_bn", [False, True])
def test_conv_bn_relu_conv(fold_bn):
    net, x = conv_bn_conv(), torch.randn(2, 3, 8, 8)
    small = compact(net, x, fold_bn=fold_bn)
    row = rows(small)["conv2"]
    assert (row.producer, row.dropped, row.prunable_channels, row.taps) == ("conv1", 2, 2, 9)
    assert row.through == ["bn", "relu"] and row.pruned_columns == 2 * 9 + 3
    assert small.conv1.out_channels == 6 and small.conv2.in_channels == 6
    keep = [1, 2, 3, 4, 6, 7]
    want = get_mask(net.conv2).reshape(6, 8, 9)[:, keep].reshape(6, -1)
    assert torch.equal(get_mask(small.conv2), want)  # sparsity inside kept channels stays
    if fold_bn:
        assert isinstance(small.bn, nn.Identity) and small.conv1.bias is not None
        assert small.spruce_compaction.folded == ["bn"]
    else:
        assert small.bn.num_features == 6
        assert torch.equal(small.bn.running_var, net.bn.running_var[keep])
    torch.testing.assert_close(run(small, x), run(net, x), rtol=1e-4, atol=1e-5)


def test_parameter_count_drops_by_rows_and_columns():
    net = conv_bn_conv()
    report = compact(net, torch.randn(2, 3, 8, 8)).spruce_compaction
    # conv1: 2 rows of 3·9; bn: 2 weights + 2 biases; conv2: 2 channels × 6 outputs × 9
    assert report.params_before - report.params_after == 2 * 27 + 4 + 2 * 6 * 9


def test_input_model_is_unchanged():
    net = conv_bn_conv()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    compact(net, torch.randn(2, 3, 8, 8), fold_bn=True)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.conv1.out_channels == 8 and net.training


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b, self.head = (nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 1),
                                                nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))  # residual: x feeds a and the add
        return self.head(x)


def test_residual_add_blocks_compaction_and_is_reported():
    net = Residual()
    for name in ("a", "b", "head"):
        layer = getattr(net, name)
        attach(layer, torch.arange(8).repeat(layer.out_channels, 1) % 2 == 0, TAPS)
    small = compact(net, torch.randn(2, 4, 5, 5))
    r = rows(small)
    assert r["b"].compacted and r["b"].producer == "a" and small.a.out_channels == 4
    assert not r["a"].compacted and "2 users" in r["a"].reason
    assert not r["head"].compacted and "add" in r["head"].reason
    assert r["head"].prunable_channels == 4  # would be droppable, but the add needs them
    assert small.stem.out_channels == 8 and small.head.in_channels == 8


class TwoUsers(nn.Module):
    def __init__(self, norm: bool = False):
        super().__init__()
        self.p = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8) if norm else None
        self.c1, self.c2 = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.p(x))
        return self.c1(self.norm(h)) if self.norm is not None else self.c1(h) + self.c2(h)


def half_columns(layer):
    return torch.arange(layer.in_features).repeat(layer.out_features, 1) < \
        layer.in_features // 2


def test_producer_with_two_users_is_left_alone():
    net = TwoUsers()
    for layer in (net.c1, net.c2):
        attach(layer, half_columns(layer), TAPS)
    small = compact(net, torch.randn(3, 6))
    for name in ("c1", "c2"):
        row = rows(small)[name]
        assert not row.compacted and "2 users" in row.reason and row.prunable_channels == 4
    assert small.p.out_features == 8


def test_layernorm_in_between_is_left_alone():
    net = TwoUsers(norm=True)
    attach(net.c1, half_columns(net.c1), TAPS)
    row = rows(compact(net, torch.randn(3, 6)))["c1"]
    assert not row.compacted and "layer_norm" in row.reason


def test_verification_names_the_pair(monkeypatch):
    """Pretend softmax were per-channel: compaction is then wrong, and verification says so."""
    class Soft(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.softmax(self.a(x), -1))

    net = Soft()
    attach(net.b, half_columns(net.b), TAPS)
    assert "softmax" in rows(compact(net, torch.randn(2, 4)))["b"].reason
    monkeypatch.setattr(graph, "ELEMENTWISE", graph.ELEMENTWISE | {torch.ops.aten.softmax.int})
    with pytest.raises(ValueError, match=r"compacting 'a' → 'b'.*exclude=\['b'\]"):
        compact(net, torch.randn(2, 4))
    row = rows(compact(net, torch.randn(2, 4), exclude=["b"]))["b"]
    assert not row.compacted and row.reason == "excluded by the caller"


def test_untraceable_model_is_returned_unchanged():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x) if x.sum() > 0 else -self.a(x))

    net = Branchy()
    attach(net.b, half_columns(net.b), TAPS)
    small = compact(net, torch.ones(2, 4))
    report = small.spruce_compaction
    assert report.error.startswith("cannot trace") and not report.rows
    assert small is not net and small.a.out_features == 8


def tiny_bert():
    return spruce.zoo.build("bert_base", seed=0, num_hidden_layers=2, hidden_size=64,
                            num_attention_heads=2, intermediate_size=128)


BERT_X = {"input_ids": torch.randint(1000, 30000, (2, 12)),
          "attention_mask": torch.ones(2, 12, dtype=torch.long)}


def test_tiny_bert_output_dense_shrinks_intermediate():
    net = tiny_bert()
    spruce.prune(net, "group", 0.5, exclude=["*.attention.*", "*.intermediate.*",
                                            "bert.pooler.*", "classifier"])
    small = compact(net, BERT_X)
    for i in range(2):
        row = rows(small)[f"bert.encoder.layer.{i}.output.dense"]
        assert row.compacted and row.dropped == 64 and row.through == ["gelu"]
        assert row.producer == f"bert.encoder.layer.{i}.intermediate.dense"
        layer = small.bert.encoder.layer[i]
        assert layer.intermediate.dense.out_features == 64 == layer.output.dense.in_features
        assert bool(get_mask(layer.output.dense).all())  # every pruned column is gone
    torch.testing.assert_close(run(small, BERT_X), run(net, BERT_X), rtol=1e-4, atol=1e-5)


def test_tiny_bert_whole_model_reports_attention():
    net = tiny_bert()
    spruce.prune(net, "group", 0.5)
    r = rows(compact(net, BERT_X))
    assert sum(row.compacted for row in r.values()) == 3  # 2 × FFN + pooler → classifier
    assert "users" in r["bert.encoder.layer.1.attention.self.query"].reason
    assert "reshape" in r["bert.encoder.layer.0.attention.output.dense"].reason


@pytest.fixture(scope="module")
def resnet_pair():
    net = spruce.zoo.build("resnet18", "cifar10", seed=0)
    spruce.prune(net, "group", 0.5)
    prune_whole_channels(net)
    randomize_norms(net)
    x = spruce.zoo.example_input("resnet18", "cifar10", batch=2)
    return net, compact(net, x), x


def test_resnet18_compacts_inside_blocks_only(resnet_pair):
    net, small, _ = resnet_pair
    r = rows(small)
    done = sorted(n for n, row in r.items() if row.compacted)
    assert done == sorted(f"layer{i}.{j}.conv2" for i in range(1, 5) for j in range(2))
    for name in done:
        producer = name.replace("conv2", "conv1")
        assert r[name].producer == producer and r[name].through[0] == producer[:-5] + "bn1"
        kept = small.get_submodule(name).in_channels
        assert kept == small.get_submodule(producer).out_channels == r[name].channels // 2
    assert "users" in r["layer2.0.conv1"].reason and "users" in r["layer1.0.conv1"].reason
    assert "add" in r["fc"].reason
    expected = 0
    for name in done:
        o, d = net.get_submodule(name).out_channels, r[name].dropped
        expected += d * (net.get_submodule(name.replace("conv2", "conv1")).in_channels * 9
                         + 2 + o * 9)
    assert small.spruce_compaction.params_before - small.spruce_compaction.params_after \
        == expected


@pytest.mark.parametrize("backend", ["dense", "groupwise"])
def test_convert_after_compaction(resnet_pair, backend):
    net, small, x = resnet_pair
    small.eval()  # convert runs example_input through its copy: keep BN statistics still
    fast = spruce.convert(small, backend, example_input=x)
    torch.testing.assert_close(run(fast, x), run(net, x), rtol=1e-4, atol=1e-4)


def test_save_and_load_compacted(resnet_pair, tmp_path):
    _, small, x = resnet_pair
    path = save_compacted(small, tmp_path / "c.safetensors")
    loaded = load_compacted(path, spruce.zoo.build("resnet18", "cifar10", seed=7))
    assert loaded.layer1[0].conv1.out_channels == small.layer1[0].conv1.out_channels
    assert set(masked_layers(loaded)) == set(masked_layers(small))
    torch.testing.assert_close(run(loaded, x), run(small, x))
    with pytest.raises(ValueError, match="layer 'conv1'"):
        load_compacted(path, spruce.zoo.build("vgg16", "cifar10"))


def test_converted_compacted_model_reloads_with_resize(resnet_pair):
    """What ``load_converted`` needs: resize the architecture first, then swap layers."""
    _, small, x = resnet_pair
    fast = spruce.convert(small.eval(), "groupwise", example_input=x)
    work = resize_layers(spruce.zoo.build("resnet18", "cifar10"), layer_shapes(fast))
    for name, mod in fast.named_modules():
        if hasattr(mod, "config") and name:
            spruce.masks.set_submodule(work, name, spruce.backends.get_backend(
                mod.config()["backend"]).empty(mod.config()))
    work.load_state_dict(fast.state_dict())
    torch.testing.assert_close(run(work, x), run(fast, x))


def test_uniform_group_pruning_reports_prunable_channels():
    net = spruce.zoo.build("vgg16", "cifar10", seed=0)
    spruce.prune(net, "group", 0.5)
    small = compact(net, spruce.zoo.example_input("vgg16", "cifar10", batch=2))
    for name, row in rows(small).items():
        mask = get_mask(net.get_submodule(name))
        dead = (~mask.any(0)).reshape(row.channels, -1).all(1)
        assert row.prunable_channels == int(dead.sum())
        assert row.dropped in (0, row.prunable_channels)
    assert rows(small)["classifier.0"].producer == "features.28"  # through a 1×1 flatten


def test_cli_compact(tmp_path):
    from spruce.cli import app
    from spruce.cli.compacting import compact_cmd

    cli = typer.Typer()
    cli.command("compact")(compact_cmd)
    cli.command("noop")(lambda: None)
    runner = CliRunner(env={"COLUMNS": "220"})
    pruned, out = tmp_path / "p.safetensors", tmp_path / "c.safetensors"
    res = runner.invoke(app, ["prune", "vgg16", "--dataset", "cifar10", "-p", "group",
                              "-d", "0.5", "-o", str(pruned)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["compact", str(pruned), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "classifier.2" in res.output and "masked layers compacted" in res.output
    loaded = load_compacted(out, spruce.zoo.build("vgg16", "cifar10"))
    assert loaded.classifier[0].out_features == 256


def test_converted_compacted_model_saves_and_loads(resnet_pair, tmp_path):
    _, small, x = resnet_pair
    fast = spruce.convert(small.eval(), "groupwise", example_input=x)
    path = spruce.save(fast, tmp_path / "fast.safetensors")
    loaded = spruce.load(path, spruce.zoo.build("resnet18", "cifar10"))
    torch.testing.assert_close(run(loaded, x), run(fast, x))
