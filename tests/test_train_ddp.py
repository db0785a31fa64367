"""Data-parallel training: 2 CPU processes on gloo equal 1 process with the same global batch.

The processes are started with ``torch.multiprocessing.spawn`` and the environment
``torchrun`` would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
code path is the one ``torchrun --nproc-per-node 2 -m spruce.train`` takes.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from spruce.masks import get_mask, masked_layers
from spruce.train import TinyCNN, TrainConfig, train

# gradual group pruning, so masks change during the run and must agree on every rank;
# one epoch at a small LR: float rounding of the two reduction orders stays below 1e-5
CFG = dict(model="tiny_cnn", data="digits", epochs=1, batch_size=64, lr=0.01,
           pattern="group", density=0.5, prune_mode="gradual", prune_every=4,
           threads=1, progress=False, seed=1, checkpoint_every=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import spruce.io
    from spruce.train import checkpoint

    writes = []  # every file write of the run goes through io.atomic_write or ckpt.save
    atomic_write, save = spruce.io.atomic_write, checkpoint.save

    def spy_write(path, *a, **k):
        writes.append(str(path))
        return atomic_write(path, *a, **k)

    def spy_save(*a, **k):
        writes.append("checkpoint")
        return save(*a, **k)

    spruce.io.atomic_write, checkpoint.save = spy_write, spy_save
    torch.manual_seed(0)
    model = TinyCNN()
    result = train(TrainConfig(**cfg), model=model)
    torch.save({"state": model.state_dict(), "writes": writes, "metrics": result.metrics,
                "masks": {n: get_mask(m) for n, m in masked_layers(model).items()}},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_two_gloo_processes_equal_one_process(tmp_path):
    run_dir = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), {**CFG, "checkpoint_dir": str(run_dir)},
                            str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    single = TinyCNN()
    ref = train(TrainConfig(**CFG, checkpoint_dir=str(tmp_path / "one")), model=single)

    # masks identical on every rank, and equal to the single process's
    assert ranks[0]["masks"].keys() == ranks[1]["masks"].keys() and ranks[0]["masks"]
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name])
        assert torch.equal(mask, get_mask(single.get_submodule(name)))
    # weights: the ranks agree exactly; the single process within float tolerance
    one = single.state_dict()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
        torch.testing.assert_close(value, one[key], rtol=1e-4, atol=1e-5)
    assert ranks[0]["metrics"]["top1"] == pytest.approx(ref.metrics["top1"], abs=0.01)
    # only rank 0 wrote files
    assert ranks[0]["writes"] and "checkpoint" in ranks[0]["writes"]
    assert ranks[1]["writes"] == []
    assert (run_dir / "results.json").is_file() and (run_dir / "curves.png").is_file()
