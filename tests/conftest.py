"""Fixtures shared by every test package."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test with one torch CPU thread, restoring the setting after.

    On the shared 2-core build machines torch's default of 2 threads makes small convolutions and
    matrix products several times slower (the threads contend with the other test processes);
    results do not depend on it. ``OMP_NUM_THREADS=1`` is set too, so that the commands a test
    runs in-process keep one thread (their thread budget never exceeds it, madmark/threads.py).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(before)
