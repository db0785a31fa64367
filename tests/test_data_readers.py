"""Dataset readers on small files written here in each standard format, and their errors."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from spruce import data
from spruce.data import cifar

# -- writers of tiny datasets in the standard formats --------------------------------------


def write_cifar(root, n=4, data_shape=None, skip=()):
    """cifar-10-batches-py as the original (Python 2 pickles: bytes keys)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        if name in skip:
            continue
        shape = data_shape or (n, 3072)
        batch = {b"batch_label": name.encode(), b"labels": list(rng.integers(0, 10, n)),
                 b"data": rng.integers(0, 256, shape, dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def write_jpeg(path, size=(64, 64), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")


def write_tiny(root, wnids=("n01", "n02", "n03"), per_class=2):
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        for i in range(per_class):
            write_jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", seed=c * 10 + i)
        write_jpeg(root / "val" / "images" / f"val_{c}.JPEG", seed=100 + c)
        lines.append(f"val_{c}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def write_imagenet(root, classes=("cat", "dog"), per_class=2):
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_jpeg(root / split / name / f"{i}.JPEG", size=(48, 40), seed=c * 7 + i)
    return root


QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def write_qqp(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = ["0\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1",
            "1\t3\t4\tWhy is the sky blue?\tHow far is the moon?\t0",
            "2\t5\t6\tbroken row with too few columns",
            "3\t7\t8\tIs tea healthy?\tIs green tea good for you?\t1"]
    (root / "train.tsv").write_text(QQP_HEADER + "\n".join(rows) + "\n")
    (root / "dev.tsv").write_text(QQP_HEADER + rows[1] + "\n" + rows[3] + "\n")
    return root


# -- CIFAR-10 ------------------------------------------------------------------------------


def test_cifar_reads_standard_batches_and_augments(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = data.load(tmp_path)  # the parent folder: format detected, subfolder found
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.zoo_dataset == "cifar10"
    assert len(ds.train) == 5 * 4 and len(ds.test) == 4
    x, y = ds.train.batch([0, 1, 2], seeds=[1, 2, 3])
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x2, _ = ds.train.batch([0, 1, 2], seeds=[1, 2, 3])
    assert torch.equal(x, x2)  # same seeds, same augmentation
    raw = cifar.read_batch(root / "data_batch_1")[0][0]  # plane layout: R, G, B of 32x32
    xe, _ = ds.test.batch([0])
    assert xe.shape == (1, 3, 32, 32)
    assert raw.shape == (3, 32, 32)


def test_cifar_missing_batch_names_the_file(tmp_path):
    write_cifar(tmp_path, skip=("data_batch_3",))
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load(tmp_path, "cifar10")


def test_cifar_malformed_batch_names_file_and_layout(tmp_path):
    write_cifar(tmp_path, data_shape=(4, 3000))
    with pytest.raises(ValueError, match=r"data_batch_1.*3072"):
        data.load(tmp_path, "cifar10")


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        data.load(tmp_path, "cifar10")


# -- Tiny-ImageNet and ImageNet ---------------------------------------------------------------


def test_tiny_imagenet_standard_layout(tmp_path):
    root = write_tiny(tmp_path / "tiny-imagenet-200")
    ds = data.load(tmp_path)  # detects the layout, descends into tiny-imagenet-200
    assert ds.name == "tiny-imagenet" and ds.num_classes == 3
    assert len(ds.train) == 6 and len(ds.test) == 3
    x, y = ds.train.batch([0, 5], seeds=[0, 1])
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [0, 2]
    _, yv = ds.test.batch([0, 1, 2])
    assert yv.tolist() == [0, 1, 2]
    assert ds.source == str(root)


def test_tiny_imagenet_errors_name_the_file(tmp_path):
    root = write_tiny(tmp_path)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt:1.*wnid"):
        data.load(root, "tiny-imagenet")
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        data.load(root, "tiny-imagenet")
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        data.load(tmp_path / "train", "tiny-imagenet")


def test_imagenet_class_folders(tmp_path):
    root = write_imagenet(tmp_path)
    ds = data.load(root, "imagenet", image_size=32)
    assert ds.num_classes == 2 and len(ds.train) == 4 and len(ds.test) == 4
    x, y = ds.train.batch([0, 3], seeds=[5, 6])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]
    xv, _ = ds.test.batch([0])
    assert xv.shape == (1, 3, 32, 32)


def test_imagenet_layout_errors(tmp_path):
    root = write_imagenet(tmp_path)
    write_jpeg(root / "val" / "zebra" / "0.JPEG")
    with pytest.raises(ValueError, match=r"zebra.*training classes"):
        data.load(root, "imagenet")
    with pytest.raises(FileNotFoundError, match="train"):
        data.load(root / "val", "imagenet")


def test_corrupt_jpeg_names_the_file(tmp_path):
    root = write_imagenet(tmp_path)
    bad = root / "train" / "cat" / "0.JPEG"
    bad.write_bytes(b"not a jpeg")
    ds = data.load(root, "imagenet", image_size=32)
    with pytest.raises(ValueError, match=r"0.JPEG: cannot decode"):
        ds.train.batch([0], seeds=[0])


# -- QQP -------------------------------------------------------------------------------------


def test_qqp_glue_tsv_with_hash_tokenizer(tmp_path):
    ds = data.load(write_qqp(tmp_path))
    assert ds.name == "qqp" and ds.task == "text" and ds.num_classes == 2
    assert len(ds.train) == 3 and len(ds.test) == 2  # the broken row is skipped, and noted
    assert any("skipped malformed rows: 1" in n for n in ds.notes)
    b = ds.train.batch([0, 1])
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert b["labels"].tolist() == [1, 0]
    assert b["input_ids"][:, 0].tolist() == [101, 101]  # [CLS]
    lengths = b["attention_mask"].sum(1)
    assert int(lengths.max()) == b["input_ids"].shape[1]  # padded to the longest
    assert int((b["input_ids"][1, int(lengths[1]):]).abs().sum()) == 0  # padding is 0


def test_qqp_wrong_header_names_the_file(tmp_path):
    write_qqp(tmp_path)
    (tmp_path / "dev.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match=r"dev.tsv: header"):
        data.load(tmp_path, "qqp")


# -- digits, detection ------------------------------------------------------------------------


def test_digits_builtin():
    ds = data.load("digits")
    assert ds.num_classes == 10 and len(ds.train) == 1437 and len(ds.test) == 360
    x, y = ds.train.batch(list(range(8)))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    all_x, _ = ds.train.batch(list(range(len(ds.train))))
    assert abs(float(all_x.mean())) < 1e-4 and abs(float(all_x.std()) - 1) < 1e-3


def test_missing_or_unknown_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        data.load(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset format"):
        data.load(tmp_path, "mnist")
