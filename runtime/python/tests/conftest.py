import pytest
import torch

# The tests' tensors are tiny: torch's intra-op threads only spin against each other and against
# whatever else the (2-core, shared) machine runs, which made the suite 10-20x slower under load.
torch.set_num_threads(1)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
