"""Fixtures shared by every test package."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test with one torch CPU thread, restoring the setting after.

    On the shared 2-core build machines torch's default of 2 threads makes small convolutions and
    matrix products several times slower (the threads contend with the other test processes);
    results do not depend on it. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
