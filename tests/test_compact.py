"""Structural compaction of masks that are not from the coupled scope: what is removed, what
is left whole and why, outputs unchanged, files, the CLI."""

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

import spruce
from spruce.compact import compact
from spruce.compact.core import run
from spruce.masks import attach, get_mask
from spruce.structure import ops
from tests.structure_models import randomize_norms

TAPS = {"patterns": [{"name": "group", "reduce": "sumsq"}]}


def group(model, layer: str):
    """The report row of the group whose readers include ``layer``."""
    rows = [r for r in model.spruce_compaction.rows
            if any(m.startswith(f"{layer}.weight axis") and m.endswith(" in") for m in r.members)]
    assert len(rows) == 1, model.spruce_compaction.rows
    return rows[0]


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
    row = group(small, "conv2")
    assert (row.removed, row.units, row.kind) == (2, 8, "channels")
    assert {"conv1.weight axis 0 out", "bn.weight axis 0 param", "conv2.weight axis 1 in"} \
        <= set(row.members)
    assert small.conv1.out_channels == 6 and small.conv2.in_channels == 6
    keep = [1, 2, 3, 4, 6, 7]
    want = get_mask(net.conv2).reshape(6, 8, 9)[:, keep].reshape(6, -1)
    assert torch.equal(get_mask(small.conv2), want)  # the partial channel 3 stays masked
    if fold_bn:
        assert isinstance(small.bn, nn.Identity) and small.spruce_compaction.folded == ["bn"]
    else:
        assert small.bn.num_features == 6 and small.bn.running_mean.shape == (6,)
    torch.testing.assert_close(run(small, x)[0], run(net, x)[0], rtol=1e-5, atol=1e-5)
    assert small.spruce_compaction.max_rel_error < 1e-5


def test_input_model_is_unchanged():
    net = conv_bn_conv()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
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


def test_residual_stream_goes_only_when_every_reader_drops_it():
    net = Residual()
    for name in ("a", "b"):
        layer = getattr(net, name)
        attach(layer, torch.arange(8).repeat(layer.out_channels, 1) % 2 == 0, TAPS)
    x = torch.randn(2, 4, 5, 5)
    small = compact(net, x)
    assert group(small, "b").removed == 4 and small.a.out_channels == 4
    stream = group(small, "a")  # a and head read the stream; head keeps every channel
    assert stream.kind == "stream" and stream.removed == 0
    assert stream.reason == "reader 'head.weight' carries no mask"
    attach(net.head, torch.arange(8).repeat(4, 1) % 2 == 0, TAPS)
    small = compact(net, x)
    assert group(small, "a").removed == 4
    assert small.stem.out_channels == small.b.out_channels == small.head.in_channels == 4
    torch.testing.assert_close(run(small, x)[0], run(net, x)[0], rtol=1e-5, atol=1e-5)


class Wide(nn.Module):
    """conv1 -> conv2 with 20 channels between them: widths that alignment rounds."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 20, 1), nn.Conv2d(20, 5, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


@pytest.mark.parametrize(("dropped", "align", "width"),
                         [(7, 1, 13), (7, 8, 16), (7, 4, 16), (4, 8, 16), (3, 8, 20),
                          (20, 8, 8), (12, 8, 8), (13, 8, 8), (11, 8, 16)])
def test_align_rounds_the_kept_width_up(dropped, align, width):
    net, x = Wide(), torch.randn(2, 3, 4, 4)
    mask = torch.ones(5, 20, dtype=torch.bool)
    mask[:, 20 - dropped:] = False  # conv2 reads none of the last `dropped` channels
    attach(net.conv2, mask, TAPS)
    small = compact(net, x, align=align)
    row = group(small, "conv2")
    assert small.conv1.out_channels == small.conv2.in_channels == width
    assert (row.removed, row.aligned) == (20 - width, width - max(20 - dropped, 1))
    # the channels kept for alignment are still pruned in conv2: outputs are unchanged
    assert int((small.conv2.weight != 0).sum()) == 5 * (20 - dropped)
    torch.testing.assert_close(run(small, x)[0], run(net, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align", [0, -8, 2.5, True])
def test_align_must_be_a_positive_int(align):
    with pytest.raises(ValueError, match="align must be a positive int"):
        compact(Wide(), torch.randn(1, 3, 2, 2), align=align)


def test_convert_compact_true_aligns_only_on_cuda():
    from spruce.api import compact_align

    assert compact_align(Wide(), True) == 1 and compact_align(Wide(), 16) == 16
    with pytest.raises(ValueError, match="compact= takes"):
        compact_align(Wide(), -1)


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


def test_a_channel_read_by_two_layers_goes_when_both_drop_it():
    net = TwoUsers()
    attach(net.c1, half_columns(net.c1), TAPS)
    assert group(compact(net, torch.randn(3, 6)), "c1").removed == 0
    assert group(compact(net, torch.randn(3, 6)), "c1").reason == "reader 'c2.weight' carries " \
        "no mask"
    attach(net.c2, half_columns(net.c2), TAPS)
    small = compact(net, torch.randn(3, 6))
    assert group(small, "c1").removed == 4 and small.p.out_features == 4


def test_layernorm_in_between_keeps_the_channels():
    net = TwoUsers(norm=True)
    attach(net.c1, half_columns(net.c1), TAPS)
    row = group(compact(net, torch.randn(3, 6)), "c1")
    assert row.removed == 0 and "layer_norm" in row.reason


class Soft(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.softmax(self.a(x), -1))


def test_verification_catches_a_wrong_rule(monkeypatch):
    """Pretend softmax were per-channel: compaction is then wrong, and verification says so."""
    net = Soft()
    attach(net.b, half_columns(net.b), TAPS)
    assert "softmax" in group(compact(net, torch.randn(2, 4)), "b").reason
    monkeypatch.setitem(ops.HANDLERS, "_softmax", ops.unary)
    monkeypatch.setitem(ops.HANDLERS, "softmax", ops.unary)
    with pytest.raises(ValueError, match=r"outputs differ after compaction.*exclude="):
        compact(net, torch.randn(2, 4))
    row = group(compact(net, torch.randn(2, 4), exclude=["b"]), "b")
    assert row.removed == 0 and row.reason.startswith("excluded by the caller")


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.a(x) if x.sum() > 0 else -self.a(x))


def test_untraceable_model_is_returned_unchanged():
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


def test_tiny_bert_group_pattern_shrinks_the_ffn_only():
    net = tiny_bert()
    spruce.prune(net, "group", 0.5)
    small = compact(net, BERT_X)
    for i in range(2):
        row = group(small, f"bert.encoder.layer.{i}.output.dense")
        assert row.removed == 64 and row.kind == "channels"
        layer = small.bert.encoder.layer[i]
        assert layer.intermediate.dense.out_features == 64 == layer.output.dense.in_features
        assert get_mask(layer.output.dense) is None  # every pruned column is gone: plain layer
        heads = group(small, f"bert.encoder.layer.{i}.attention.output.dense")
        assert heads.kind == "heads" and heads.removed == 0  # columns, not whole heads
    torch.testing.assert_close(run(small, BERT_X)[0], run(net, BERT_X)[0], rtol=1e-4,
                               atol=1e-5)


@pytest.fixture(scope="module")
def resnet_pair():
    net = spruce.zoo.build("resnet18", "cifar10", seed=0)
    randomize_norms(net)
    x = torch.randn(1, 3, 16, 16)
    spruce.prune(net, "channel", 0.5, scope="coupled", example_input=x)
    return net, compact(net, x), x


@pytest.mark.parametrize("backend", ["dense", "groupwise"])
def test_convert_after_compaction(resnet_pair, backend):
    net, small, x = resnet_pair
    fast = spruce.convert(small, backend, example_input=x)
    torch.testing.assert_close(fast(x), run(net, x)[0], rtol=1e-4, atol=1e-4)


def test_save_and_load_compacted(resnet_pair, tmp_path):
    net, small, x = resnet_pair
    path = spruce.save(small, tmp_path / "small.safetensors")
    back = spruce.load(path, spruce.zoo.build("resnet18", "cifar10", seed=1))
    assert back.layer1[0].conv1.out_channels == small.layer1[0].conv1.out_channels == 32
    torch.testing.assert_close(run(back, x)[0], run(small, x)[0])
    assert len(back.spruce_compaction.compacted) == len(small.spruce_compaction.compacted)
    with pytest.raises(ValueError, match="compacted from"):
        spruce.load(path, spruce.zoo.build("vgg16", "cifar10"))


def test_converted_compacted_model_saves_and_loads(resnet_pair, tmp_path):
    net, small, x = resnet_pair
    fast = spruce.convert(small, "dense", example_input=x)
    path = spruce.save(fast, tmp_path / "fast.safetensors")
    back = spruce.load(path, spruce.zoo.build("resnet18", "cifar10", seed=1))
    torch.testing.assert_close(back(x), fast(x))


def test_cli_prune_coupled_then_compact(tmp_path):
    from spruce.cli import app

    runner = CliRunner()
    pruned, small = tmp_path / "p.safetensors", tmp_path / "s.safetensors"
    res = runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "channel",
                              "-s", "coupled", "-d", "0.5", "-o", str(pruned)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compact", str(pruned), "-o", str(small)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "12 of 13 coupled groups compacted" in res.output and "stream" in res.output
    back = spruce.load(small, spruce.zoo.build("resnet18", "cifar10"))
    assert back.layer4[0].conv2.out_channels == 256 and back.fc.in_features == 256
    assert isinstance(app, typer.Typer)


def test_channels_pruned_only_where_written_stay_and_say_why():
    """The channel pattern masks output rows: the bias of a pruned row still reaches the
    next layer, so nothing goes, and the report (and convert's compact=True) say why."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    spruce.prune(net, "channel", 0.5)
    small = compact(net, x)
    row = group(small, "2")
    assert row.removed == 0 and row.written_only == 16 and not small.spruce_compaction.compacted
    assert row.reason.startswith("16 of 32 channels are pruned only where they are written "
                                 "('0' output rows)") and "scope='coupled'" in row.reason
    with pytest.warns(UserWarning, match="compacted nothing: 16 of 32 channels"):
        fast = spruce.convert(net, "dense", example_input=x, compact=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-6)
    coupled = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    spruce.prune(coupled, "channel", 0.5, scope="coupled", example_input=x)
    assert group(compact(coupled, x), "2").removed == 16  # the fix the reason names works
