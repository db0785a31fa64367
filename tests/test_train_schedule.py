"""Schedules are pure functions of the step: cubic density (Zhu & Gupta), learning rate."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spruce.train import TrainConfig, density_at, lr_at, prune_steps
from spruce.train.config import resume_mismatch


@settings(max_examples=50, deadline=None)
@given(start=st.integers(0, 100), length=st.integers(1, 500),
       d_final=st.floats(0.01, 1.0), d0=st.floats(0.5, 1.0))
def test_cubic_density_endpoints_and_monotone(start, length, d_final, d0):
    end = start + length
    assert density_at(start, start, end, d0, d_final) == d0
    assert density_at(end, start, end, d0, d_final) == d_final  # exactly, at the end step
    assert density_at(end + 7, start, end, d0, d_final) == d_final
    values = [density_at(s, start, end, d0, d_final) for s in range(start, end + 1)]
    if d0 >= d_final:
        assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_cubic_density_formula():
    # halfway: d_f + (d0 - d_f) * (1/2)^3
    assert density_at(50, 0, 100, 1.0, 0.2) == pytest.approx(0.2 + 0.8 / 8)
    with pytest.raises(ValueError, match="ends"):
        density_at(0, 10, 5, 1.0, 0.5)


def test_prune_steps_always_end_on_the_end_step():
    assert prune_steps(0, 10, 3) == [3, 6, 9, 10]
    assert prune_steps(4, 30, 5) == [9, 14, 19, 24, 29, 30]
    assert prune_steps(5, 5, 2) == [5]


def test_learning_rate_schedules():
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 100, 0.1, "cosine", warmup=10) == pytest.approx(0.01)
    assert lr_at(9, 100, 0.1, "cosine", warmup=10) == pytest.approx(0.1)
    steps = [lr_at(s, 100, 0.1, "step") for s in (0, 49, 50, 74, 75, 99)]
    assert steps == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_at(42, 100, 0.3, "constant") == 0.3
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_at(0, 10, 0.1, "linear")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        TrainConfig(optimizer="adam").validated()
    with pytest.raises(ValueError, match="without a pattern"):
        TrainConfig(density=0.5).validated()
    with pytest.raises(ValueError, match="resume needs checkpoint_dir"):
        TrainConfig(resume=True).validated()
    assert TrainConfig(pattern="group", density=0.5).validated().prune_mode == "oneshot"
    a = TrainConfig(pattern="group", density=0.5).validated()
    b = TrainConfig(pattern="group", density=0.25, workers=3).validated()
    assert resume_mismatch({k: v for k, v in a.to_dict().items()}, b) == \
        ["density: checkpoint 0.5, now 0.25"]
