import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors in its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Training runs set threads and deterministic mode; later tests get them back."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


class SmallNet(nn.Module):
    """Conv (with a depthwise one) + Linear, small enough for fast CPU tests."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@pytest.fixture
def small_net():
    return SmallNet()


@pytest.fixture
def small_input():
    return torch.randn(4, 3, 8, 8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of every format spruce writes (``make_files``), built once per test module:
    the hostile-file tests tamper with copies of them."""
    from tests.hostile_files_kit import make_files

    return make_files(tmp_path_factory.mktemp("hostile"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on the GPU device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
