"""The command line: info, prune, demo; bad input exits with a clear message."""

import pytest
import torch
from typer.testing import CliRunner

import spruce
from spruce.cli import app
from spruce.io import read_header
from spruce.masks import get_mask

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not cut names


def test_info_lists_layers_and_groups():
    res = runner.invoke(app, ["info", "resnet18", "--dataset", "cifar10"])
    assert res.exit_code == 0, res.output
    assert "21 prunable layers" in res.output
    assert "layer4.1.conv2" in res.output and "512×4608" in res.output


def test_prune_writes_file_and_table(tmp_path):
    out = tmp_path / "r18.safetensors"
    res = runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "group",
                              "-d", "0.5", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "total" in res.output and "0.500" in res.output
    header = read_header(out)
    assert header["model"] == "resnet18" and len(header["layers"]) == 21
    model = spruce.zoo.build("resnet18", "cifar10", seed=123)
    spruce.load(out, model)
    assert spruce.density_of(model) == pytest.approx(0.5, abs=2e-3)


def test_prune_block_option():
    res = runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "block",
                              "--block", "4x4", "-d", "0.25"])
    assert res.exit_code == 0, res.output
    assert "block 4x4" in res.output


def test_prune_group_channel_unit_round_trips(tmp_path):
    out = tmp_path / "r18.safetensors"
    res = runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "group",
                              "--unit", "channel", "-d", "0.5", "-x", "fc", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "group (channel)" in res.output
    model = spruce.load(out, spruce.zoo.build("resnet18", "cifar10", seed=3))
    mask = get_mask(model.layer2[0].conv2)  # 128 input channels × 9 taps
    assert torch.equal(mask[0].reshape(128, 9), mask[0].reshape(128, 9)[:, :1].expand(128, 9))
    assert int(mask[0].sum()) == 64 * 9


@pytest.mark.parametrize("args,message", [
    (["prune", "resnet18", "-p", "hexagon", "-d", "0.5"], "unknown pattern"),
    (["prune", "resnet18", "-p", "group", "--unit", "tap", "-d", "0.5"], "group unit"),
    (["prune", "resnet18", "-p", "element", "-d", "1.5"], "(0, 1]"),
    (["prune", "nosuchnet", "-d", "0.5"], "unknown model"),
    (["prune", "resnet18", "-c", "taylor", "-d", "0.5"], "calibration data"),
])
def test_bad_input_exit_code_2(args, message):
    res = runner.invoke(app, args + ["--dataset", "cifar10"] if "nosuchnet" not in args else args)
    assert res.exit_code == 2
    assert message in res.output


def test_model_from_file(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text("from torch import nn\n\ndef make():\n"
                   "    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))\n")
    res = runner.invoke(app, ["prune", f"{src}:make", "-p", "channel", "-d", "0.5"])
    assert res.exit_code == 0, res.output
    assert "channel" in res.output


def test_demo_prints_every_pattern():
    res = runner.invoke(app, ["demo", "--dataset", "cifar10"])
    assert res.exit_code == 0, res.output
    for label in ("element", "2:4", "block 8x8", "group", "channel"):
        assert label in res.output


def test_convert_round_trip(tmp_path):
    pruned, fast = tmp_path / "p.safetensors", tmp_path / "f.safetensors"
    assert runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "group",
                               "-d", "0.5", "-o", str(pruned)]).exit_code == 0
    res = runner.invoke(app, ["convert", str(pruned), "-b", "groupwise", "-o", str(fast)])
    assert res.exit_code == 0, res.output
    assert "21 of 21 layers on groupwise" in res.output
    model = spruce.load(fast, spruce.zoo.build("resnet18", "cifar10"))
    ref = spruce.load(pruned, spruce.zoo.build("resnet18", "cifar10")).eval()
    x = spruce.zoo.example_input("resnet18", "cifar10", batch=2)
    import torch
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["-b", "nosuch"], "unknown backend"),
    (["-b", "channel"], "does not serve the group pattern"),
    (["--dtype", "fp8"], "unknown dtype"),
    (["--device", "cuda"], "no CUDA"),
])
def test_convert_bad_input(args, message, tmp_path):
    pruned = tmp_path / "p.safetensors"
    runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "group", "-d", "0.5",
                        "-o", str(pruned)])
    res = runner.invoke(app, ["convert", str(pruned)] + args)
    assert res.exit_code == 2 and message in res.output, res.output


def test_backends_lists_cpu_backends():
    res = runner.invoke(app, ["backends"])
    assert res.exit_code == 0 and "groupwise" in res.output and "dense" in res.output


def test_convert_auto_writes_a_plan_and_plan_show_reads_it(tmp_path):
    pruned, plan = tmp_path / "p.safetensors", tmp_path / "plan.json"
    assert runner.invoke(app, ["prune", "resnet18", "--dataset", "cifar10", "-p", "group",
                               "-d", "0.5", "-x", "layer*", "-o", str(pruned)]).exit_code == 0
    res = runner.invoke(app, ["convert", str(pruned), "-b", "auto", "--plan", str(plan)])
    assert res.exit_code == 0, res.output
    shown = runner.invoke(app, ["plan", "show", str(plan)])
    assert shown.exit_code == 0, shown.output
    assert "conv1" in shown.output and "fc" in shown.output and "whole model" in shown.output
    (tmp_path / "junk.json").write_text("[]")
    bad = runner.invoke(app, ["plan", "show", str(tmp_path / "junk.json")])
    assert bad.exit_code == 2 and "corrupt" in bad.output


def test_plan_show_marks_probed_candidates(tmp_path):
    from spruce.auto import LayerChoice, Plan
    path = tmp_path / "plan.json"
    Plan("cpu", "x", "fp32", {"fc": LayerChoice("fc", "k", [4, 8], [2, 8],
                                                {"dense": 1.0, "csr": 9.5}, probed=["csr"])}
         ).save(path)
    shown = runner.invoke(app, ["plan", "show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "9.5*" in shown.output and "one probe call only" in shown.output
    assert "1*" not in shown.output  # dense was timed in full


def test_learn_mask_writes_hard_24_masks_and_curves(tmp_path):
    """Frozen dense weights in, exact 2:4 masks out (the stem, K = 27, excluded), through
    the training loop with its curves."""
    pytest.importorskip("sklearn")
    from spruce.learned import masks as _learned  # noqa: F401  (criterion "learned")
    from spruce.masks import get_mask
    from spruce.patterns import get_pattern
    from spruce.train.models import TinyCNN
    from spruce.view import to_view

    dense = TinyCNN()
    spruce.save(dense, tmp_path / "dense.safetensors")
    out, logs = tmp_path / "learned.safetensors", tmp_path / "logs"
    res = runner.invoke(app, ["learn-mask", "tiny_cnn", "--data", "digits", "--init",
                              str(tmp_path / "dense.safetensors"), "--epochs", "1",
                              "--batch-size", "128", "--hard", "--tau-schedule", "exp",
                              "--image-size", "8", "-x", "features.0.0",
                              "--checkpoint-dir", str(logs), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "learned 2:4 masks" in res.output and (logs / "curves.png").is_file()
    model = spruce.load(out, TinyCNN())
    vec = get_pattern("2:4")
    masked = {n: m for n, m in model.named_modules() if get_mask(m) is not None}
    assert set(masked) == {"features.1.0", "features.2.0", "fc1", "fc"}
    for name, layer in masked.items():
        mask = get_mask(layer)
        assert vec.conforms(mask) is None and int(mask.sum()) * 2 == mask.numel(), name
        w = spruce.masks.original_weight(layer)
        torch.testing.assert_close(to_view(w), to_view(dict(dense.named_modules())[name]
                                                       .weight), rtol=0, atol=0)
