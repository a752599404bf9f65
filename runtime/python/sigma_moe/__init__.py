"""sigma-moe from Python: the MoE kernels through a pybind11 extension, and a PyTorch layer.

    import sigma_moe.torch
    moe = sigma_moe.torch.MoE(model_dim=64, ffn_dim=128, num_experts=8, top_k=2)
    y = moe(x)                      # x [..., 64], float32 or bfloat16, CPU or CUDA
    loss = main_loss(y) + moe.aux_loss
    attn = sigma_moe.torch.DiffQKVAttention(64, n_q=8, n_k=2, n_v=4, head_dim=16, d_aug=32)
    y = attn(x)                     # x [B, S, 64]: causal DiffQKV self-attention

Tensors cross into C++ through DLPack without copies (sigma_moe._C, runtime/python/dlpack.h).
Errors from C++: InvalidArgument becomes ValueError, everything else RuntimeError.
Lower-level pieces (router, routing plan, permute/combine, expert MLP) for frameworks that mix
them with their own: sigma_moe.ops.
"""

# The extension may be built outside the source tree (CMake puts it in
# <build>/runtime/python/sigma_moe/): let this package span every sigma_moe directory on sys.path.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from sigma_moe import _C  # noqa: E402
from sigma_moe._C import (DiffQkvConfig, DiffQkvState, MoEConfig, MoEState,  # noqa: E402,F401
                          RoutingPlan)


def built_with_cuda() -> bool:
    """True when the extension was built with the CUDA backend."""
    return _C.built_with_cuda()


def cuda_device_count() -> int:
    """GPUs our kernels can use (0 without the CUDA backend or a GPU)."""
    return _C.cuda_device_count()


__all__ = ["DiffQkvConfig", "DiffQkvState", "MoEConfig", "MoEState", "RoutingPlan",
           "built_with_cuda", "cuda_device_count"]
