"""Bad input ends in a clear error (SpruceError, or exit status 2 naming the option), before
any work is done: output paths, option ranges, hostile dataset files, API options."""

import os
import pickle
import time

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import spruce
from spruce import data
from spruce.cli import app
from spruce.data import cifar
from spruce.errors import SpruceError
from spruce.paths import check_output_dir, check_output_file
from spruce.patterns import get_pattern
from spruce.patterns.block import parse_block

runner = CliRunner(env={"COLUMNS": "200"})
NOT_CREATABLE = "/proc/spruce-test/out"  # /proc takes no new folders, even from root


def _fails(args: list[str], *needles: str) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    flat = " ".join(res.output.split())  # rich wraps long lines
    for n in needles:
        assert n in flat, flat
    return flat


# -- output paths --------------------------------------------------------------------------
def test_output_file_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpruceError, match="is a folder; give a file name"):
        check_output_file(tmp_path)
    with pytest.raises(SpruceError, match="lies under .*file, which is a file"):
        check_output_file(tmp_path / "file" / "m.safetensors")
    with pytest.raises(SpruceError, match="cannot create the folder"):
        check_output_file(NOT_CREATABLE + "/m.safetensors")
    with pytest.raises(SpruceError, match="the folder /proc is not writable"):
        check_output_file("/proc/m.safetensors")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SpruceError, match="not a regular file"):
        check_output_file(tmp_path / "pipe")
    before = sorted(tmp_path.iterdir())
    made = check_output_file(tmp_path / "new" / "deeper" / "m.safetensors", "--plan")
    assert made == tmp_path / "new" / "deeper" / "m.safetensors"
    assert sorted(tmp_path.iterdir()) == before  # nothing created, the probe is gone


def test_output_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpruceError, match="--checkpoint-dir .* is a file; give a folder"):
        check_output_dir(tmp_path / "file", "--checkpoint-dir")
    with pytest.raises(SpruceError, match="cannot create the folder"):
        check_output_dir(NOT_CREATABLE)
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SpruceError, match="not writable"):
            check_output_file(ro / "m.safetensors")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", [
    ["prune", "vgg16", "--dataset", "cifar10"],
    ["train", "tiny_cnn", "--steps", "1"],
    ["learn-mask", "tiny_cnn"],
    ["convert", "missing.safetensors"],
    ["compact", "missing.safetensors"],
])
def test_commands_check_their_output_file_before_work(command, tmp_path):
    (tmp_path / "file").write_text("x")
    t0 = time.perf_counter()
    _fails([*command, "-o", str(tmp_path)], f"--output {tmp_path} is a folder")
    _fails([*command, "-o", str(tmp_path / "file" / "m.safetensors")], "which is a file")
    assert time.perf_counter() - t0 < 10  # nothing was trained or converted


def test_folder_outputs_and_plans_are_checked_first(tmp_path):
    (tmp_path / "file").write_text("x")
    under = str(tmp_path / "file" / "out")
    _fails(["characterize", "-o", under], "which is a file")
    _fails(["bench", "model", "vgg16", "-o", under], "which is a file")
    _fails(["bench", "layer", "vgg16-fc", "-o", under], "which is a file")
    _fails(["train", "tiny_cnn", "--checkpoint-dir", under], "--checkpoint-dir", "which is a file")
    _fails(["convert", "missing.safetensors", "--plan", str(tmp_path)], "--plan", "is a folder")


# -- option ranges -------------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["demo", "--model", "nosuch"], ["unknown model 'nosuch'"]),
    (["demo", "--density", "0"], ["--density must be in (0, 1]; got 0"]),
    (["prune", "vgg16", "-d", "1.5"], ["--density must be in (0, 1]; got 1.5"]),
    (["train", "tiny_cnn", "--device", "bogus"], ["--device", "'bogus'", "auto, cpu, cuda"]),
    (["train", "tiny_cnn", "--batch-size", "-3"], ["--batch-size) must be >= 1; got -3"]),
    (["train", "tiny_cnn", "--batch-size", "0"], ["--batch-size) must be >= 1; got 0"]),
    (["train", "tiny_cnn", "--threads", "0"], ["--threads) must be >= 1; got 0"]),
    (["train", "tiny_cnn", "--num-classes", "0"], ["--num-classes) must be >= 1; got 0"]),
    (["train", "tiny_cnn", "-p", "group", "-d", "0"], ["--density) must be a kept fraction"]),
    (["train", "tiny_cnn", "--workers", "-1"], ["--workers) must be >= 0; got -1"]),
    (["bench", "model", "vgg16", "--batch", "0"], ["--batch must be >= 1; got 0"]),
    (["bench", "model", "vgg16", "--batch", "-3"], ["--batch must be >= 1; got -3"]),
    (["bench", "layer", "vgg16-fc", "--threads", "0"], ["--threads must be >= 1; got 0"]),
    (["characterize", "--threads", "0", "-o", "unused"], ["--threads must be >= 1; got 0"]),
    (["learn-mask", "tiny_cnn", "--tau", "0", "-o", "m.safetensors"], ["--tau must be > 0"]),
])
def test_out_of_range_options_name_the_option_and_range(args, needles, tmp_path,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(args, *needles)


def test_convert_auto_batch_zero_is_refused_before_timing(tmp_path):
    net = spruce.zoo.build("vgg16", "cifar10")
    spruce.prune(net, "group", 0.5)
    path = spruce.save(net, tmp_path / "v.safetensors", extra={"model": "vgg16",
                                                              "dataset": "cifar10"})
    plan = tmp_path / "plan.json"
    _fails(["convert", str(path), "-b", "auto", "--batch", "0", "--plan", str(plan)],
           "--batch) must be an integer >= 1; got 0")
    assert not plan.exists()


# -- dataset readers -----------------------------------------------------------------------
def _cifar_batch(file, labels) -> None:
    d = {b"data": np.zeros((2, cifar.ROW), np.uint8), b"labels": labels}
    file.write_bytes(pickle.dumps(d, protocol=2))


def test_cifar_shared_nested_labels_are_refused_before_expansion(tmp_path):
    nested = [0, 1]
    for _ in range(24):  # 2**25 labels if expanded; the pickle is a few kB
        nested = [nested, nested]
    _cifar_batch(tmp_path / "data_batch_1", nested)
    assert (tmp_path / "data_batch_1").stat().st_size < 10_000
    with pytest.raises(SpruceError, match=r"data_batch_1: 'labels' holds a list; expected 2 "):
        cifar.read_batch(tmp_path / "data_batch_1")
    _cifar_batch(tmp_path / "data_batch_1", [[0]] * 3)
    with pytest.raises(SpruceError, match="3 labels for 2 images"):
        cifar.read_batch(tmp_path / "data_batch_1")


def _png(path, size=(8, 8)) -> None:
    from PIL import Image

    Image.new("RGB", size, (10, 20, 30)).save(path, format="PNG")


def _imagenet(root) -> None:
    for split in ("train", "val"):
        (root / split / "cls").mkdir(parents=True)
        _png(root / split / "cls" / "a.JPEG")


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path):
    _imagenet(tmp_path)
    os.mkfifo(tmp_path / "train" / "cls" / "b.JPEG")
    with pytest.raises(SpruceError, match=r"b\.JPEG: not a regular file"):
        data.load(tmp_path, "imagenet")


def test_decompression_bomb_is_a_spruce_error(tmp_path, monkeypatch):
    from PIL import Image

    from spruce.data.folders import decode

    _png(tmp_path / "big.png", (64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 × the limit
    with pytest.raises(SpruceError, match=r"big\.png: cannot decode image "
                                          r"\(DecompressionBombError"):
        decode(tmp_path / "big.png")


def _tiny(root, val_line: str, wnid: str = "n01") -> None:
    (root / "train" / "n01" / "images").mkdir(parents=True)
    _png(root / "train" / "n01" / "images" / "a.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    _png(root / "val" / "images" / "v.JPEG")
    (root / "wnids.txt").write_text(wnid + "\n")
    (root / "val" / "val_annotations.txt").write_text(val_line + "\n")


def test_tiny_imagenet_paths_stay_inside_the_dataset(tmp_path):
    _tiny(tmp_path / "ok", "v.JPEG\tn01\t0\t0\t8\t8")
    assert len(data.load(tmp_path / "ok", "tiny-imagenet").test) == 1
    _tiny(tmp_path / "up", "../../../../etc/passwd\tn01\t0\t0\t8\t8")
    with pytest.raises(SpruceError, match=r"val_annotations\.txt:1: file name "
                                          r"'../../../../etc/passwd' leaves the dataset"):
        data.load(tmp_path / "up", "tiny-imagenet")
    _tiny(tmp_path / "abs", "/etc/passwd\tn01\t0\t0\t8\t8")
    with pytest.raises(SpruceError, match="leaves the dataset"):
        data.load(tmp_path / "abs", "tiny-imagenet")


def test_tiny_imagenet_non_utf8_annotations(tmp_path):
    _tiny(tmp_path, "v.JPEG\tn01\t0\t0\t8\t8")
    ann = tmp_path / "val" / "val_annotations.txt"
    ann.write_bytes(b"v.JPEG\tn01\t0\t0\t8\t8\nw\xff.JPEG\tn01\n")
    with pytest.raises(SpruceError, match=r"val_annotations\.txt:2: not UTF-8"):
        data.load(tmp_path, "tiny-imagenet")


HEADER = b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def _qqp(root, train_body: bytes) -> None:
    root.mkdir(exist_ok=True)
    (root / "train.tsv").write_bytes(HEADER + train_body)
    (root / "dev.tsv").write_bytes(HEADER + b"1\t1\t2\ta b\tc d\t0\n")


def test_qqp_non_utf8_names_file_and_line(tmp_path):
    _qqp(tmp_path, b"1\t1\t2\tok\tok\t1\n2\t3\t4\tbad \xff\xfe\tq\t0\n")
    with pytest.raises(SpruceError, match=r"train\.tsv:3: not UTF-8"):
        data.load(tmp_path, "qqp")


def test_qqp_oversized_field_names_file_and_line(tmp_path):
    _qqp(tmp_path, b"1\t1\t2\tok\tok\t1\n2\t3\t4\t" + b"w" * 200_000 + b"\tq\t0\n")
    with pytest.raises(SpruceError, match=r"train\.tsv:3: unreadable row \(field larger"):
        data.load(tmp_path, "qqp")


# -- API options ---------------------------------------------------------------------------
@pytest.mark.parametrize("given, sides", [(8, (8, 8)), ("8x8", (8, 8)), ("4x2", (4, 2)),
                                          ("8", (8, 8)), ((2, 4), (2, 4)), ([3, 3], (3, 3))])
def test_block_shape_forms(given, sides):
    assert parse_block(given) == sides
    assert get_pattern("block", block=given).block == sides


@pytest.mark.parametrize("given", ["8x", "axb", 2.5, (8,), "8x8x8", None, True, 0, "0x4"])
def test_block_shape_refused_with_the_forms(given):
    with pytest.raises(SpruceError, match=r"block"):
        parse_block(given)
    with pytest.raises(SpruceError, match=r"'8x8'|>= 1"):
        get_pattern("block", block=given)


def test_prune_accepts_block_8_and_8x8():
    for block in (8, "8x8"):
        net = nn.Sequential(nn.Linear(32, 32))
        report = spruce.prune(net, "block", 0.5, block=block)
        assert report.rows[0].pattern == "block 8x8"


def _pruned() -> nn.Module:
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    spruce.prune(net, "group", 0.5)
    return net


def test_convert_refuses_unknown_options_listing_the_valid_ones():
    with pytest.raises(SpruceError, match=r"no option 'layuot'; its options: groups_from, "
                                          r"layout"):
        spruce.convert(_pruned(), "groupwise", layuot="rows")


@pytest.mark.parametrize("name, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                         ("fp32", torch.float32)])
def test_convert_dtype_strings(name, dtype):
    fast = spruce.convert(_pruned(), "dense", dtype=name)
    assert next(fast.parameters()).dtype == dtype


def test_convert_bad_dtype_string():
    with pytest.raises(SpruceError, match="dtype='fp8' is not a dtype.*'fp16'"):
        spruce.convert(_pruned(), "dense", dtype="fp8")


def test_convert_nan_weights_name_the_layer():
    net = _pruned()
    with torch.no_grad():
        net[2].parametrizations.weight.original[0, 0] = float("nan")
    with pytest.raises(SpruceError, match=r"layer '2': its weight holds NaN or inf"):
        spruce.convert(net, "dense")


def test_auto_refuses_an_option_no_candidate_reads():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    spruce.prune(model, "group", 0.5)
    with pytest.raises(SpruceError, match="backend 'auto' has no option 'layuot'.*layout"):
        spruce.convert(model, "auto", example_input=torch.randn(2, 8), layuot="rows")
