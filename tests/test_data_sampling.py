"""Batch plans and augmentations: pure functions of (seed, epoch, step)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spruce.data import sampler, transforms


@settings(max_examples=30, deadline=None)
@given(n=st.integers(8, 200), world=st.sampled_from([1, 2, 4]), per_rank=st.integers(1, 8),
       epoch=st.integers(0, 3))
def test_ranks_split_each_global_batch(n, world, per_rank, epoch):
    """W ranks with B/W each see exactly the samples (and augmentation seeds) that one
    process with the global batch B sees, step by step."""
    global_batch = world * per_rank
    if n < global_batch:
        return
    whole = sampler.train_plan(n, global_batch, 7, epoch)
    parts = [sampler.train_plan(n, global_batch, 7, epoch, r, world) for r in range(world)]
    for step, (idx, seeds) in enumerate(whole):
        assert sum((p[step][0] for p in parts), []) == idx
        assert sum((p[step][1] for p in parts), []) == seeds
    assert len(whole) == n // global_batch


def test_resume_position_and_epoch_orders():
    full = sampler.train_plan(100, 10, 3, epoch=2)
    assert sampler.train_plan(100, 10, 3, epoch=2, start=4) == full[4:]
    assert sampler.train_plan(100, 10, 3, epoch=3) != full
    every = sorted(sum((b[0] for b in full), []))
    assert every == list(range(100))


def test_eval_plan_covers_every_sample_once():
    for world in (1, 2, 3):
        seen = sorted(i for r in range(world) for idx, _ in sampler.eval_plan(10, 3, r, world)
                      for i in idx)
        assert seen == list(range(10))


def test_batch_errors_name_the_fix():
    import pytest

    with pytest.raises(ValueError, match="lower --batch-size"):
        sampler.steps_per_epoch(10, 64)
    with pytest.raises(ValueError, match="divisible by 4"):
        sampler.train_plan(100, 10, 0, 0, 0, 4)


def test_transforms_shapes_and_determinism():
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    f = transforms.to_float(img)
    assert f.dtype == torch.float32 and float(f.max()) <= 1.0
    g = torch.Generator().manual_seed(0)
    assert transforms.random_crop(f, g, size=32, padding=4).shape == (3, 32, 32)
    assert transforms.random_resized_crop(f, g, size=24).shape == (3, 24, 24)
    assert transforms.center_crop(f, size=30).shape == (3, 30, 30)
    assert min(transforms.resize_shorter(f, size=20).shape[1:]) == 20
    flipped = transforms.random_hflip(f, None, p=1.0)
    assert torch.equal(flipped, f.flip(-1))
    pipe = transforms.cifar_train(32, 4)
    a = pipe(img[:, :32, :32], torch.Generator().manual_seed(5))
    b = pipe(img[:, :32, :32], torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    ev = transforms.imagenet_eval(16)(img, None)
    assert ev.shape == (3, 16, 16)
