"""Bad inputs raise ValueError (InvalidArgument) or RuntimeError (anything else) with the C++
message; nothing crashes the interpreter."""

import numpy as np
import pytest
import torch

from conftest import requires_cuda
from sigma_moe import _C, MoEConfig
from sigma_moe.torch import MoE

T, M, H, E = 10, 8, 12, 4


@pytest.fixture
def layer():
    return MoE(M, H, E, top_k=2)


def weights(layer):
    return [w.detach() for w in (layer.w_gate, layer.w1, layer.w3, layer.w2)]


@pytest.mark.parametrize("kwargs, field", [
    (dict(model_dim=0, ffn_dim=H, num_experts=E), "model_dim"),
    (dict(model_dim=M, ffn_dim=-1, num_experts=E), "ffn_dim"),
    (dict(model_dim=M, ffn_dim=H, num_experts=0), "num_experts"),
    (dict(model_dim=M, ffn_dim=H, num_experts=E, top_k=E + 1), "top_k"),
    (dict(model_dim=M, ffn_dim=H, num_experts=E, top_k=0), "top_k"),
])
def test_bad_config_is_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MoE(**kwargs)
    with pytest.raises(ValueError, match=field):
        MoEConfig(**kwargs)


def test_bad_layer_dtype():
    with pytest.raises(ValueError, match="dtype"):
        MoE(M, H, E, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        MoEConfig(M, H, E, dtype="f16")


def test_wrong_input_dtype_shape_contiguity(layer):
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(T, M, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(T, M).bfloat16())
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(T, M + 1))
    with pytest.raises(ValueError, match="non-contiguous"):
        layer(torch.randn(M, T).t())
    with pytest.raises(TypeError):
        layer(np.zeros((T, M), np.float32))


def test_low_level_checks_carry_the_cpp_message(layer):
    config = layer.config()
    x = torch.randn(T, M)
    with pytest.raises(ValueError, match=r"^y.shape: got \[11, 8\], expected \[10, 8\]$"):
        _C.moe_forward(config, *weights(layer), x, torch.empty(T + 1, M))
    with pytest.raises(ValueError, match="x.dtype: got float64"):
        _C.moe_forward(config, *weights(layer), x.double(), torch.empty(T, M))
    with pytest.raises(ValueError, match="x: got a non-contiguous tensor"):
        _C.moe_forward(config, *weights(layer), torch.randn(M, T).t(), torch.empty(T, M))
    with pytest.raises(ValueError, match="w1"):
        _C.moe_forward(config, layer.w_gate.detach(), layer.w1.detach()[:, :, :-1].contiguous(),
                       layer.w3.detach(), layer.w2.detach(), x, torch.empty(T, M))
    with pytest.raises(ValueError, match="x: got list"):
        _C.moe_forward(config, *weights(layer), [[1.0] * M] * T, torch.empty(T, M))
    with pytest.raises(ValueError, match="x: got None"):
        _C.moe_forward(config, *weights(layer), None, torch.empty(T, M))
    # torch refuses to export a tensor that requires grad: reported, not crashed.
    with pytest.raises(ValueError, match="w_gate"):
        _C.moe_forward(config, layer.w_gate, *weights(layer)[1:], x, torch.empty(T, M))
    with pytest.raises(ValueError, match="topk_idx"):
        _C.build_routing_plan(torch.zeros(T, 1, dtype=torch.int64), E)
    with pytest.raises(ValueError, match="offsets"):
        _C.experts_forward(*weights(layer)[1:], torch.empty(3, M), [0, 1, 2],
                           *[torch.empty(3, H)] * 3, torch.empty(3, M))


def test_out_of_range_expert_ids_are_value_errors():
    bad = torch.tensor([[0], [7], [1]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"topk_idx\[1, 0\]: got 7"):
        _C.build_routing_plan(bad, E)


def test_backward_with_changed_top_k_is_runtime_error(layer):
    x = torch.randn(T, M)
    state, _ = _C.moe_forward(layer.config(), *weights(layer), x, torch.empty(T, M))
    config = layer.config()
    config.top_k = 1
    grads = [torch.empty(w.shape) for w in weights(layer)]
    with pytest.raises(RuntimeError, match="FAILED_PRECONDITION.*top_k"):
        _C.moe_backward(config, *weights(layer), state, torch.randn(T, M), torch.empty(T, M),
                        *grads)
    with pytest.raises(ValueError, match="top_k"):
        config.top_k = E + 1


def test_consumed_capsule_is_rejected():
    capsule = torch.utils.dlpack.to_dlpack(torch.randn(T, M))
    w_gate = torch.randn(M, E)
    outs = (torch.empty(T, E), torch.empty(T, E), torch.empty(T, 1, dtype=torch.int32),
            torch.empty(T, 1))
    _C.router_forward(capsule, w_gate, *outs)
    with pytest.raises(ValueError, match="capsule"):
        _C.router_forward(capsule, w_gate, *outs)


def test_routing_stats_before_forward(layer):
    with pytest.raises(RuntimeError, match="before the first forward"):
        layer.routing_stats()


@requires_cuda
def test_device_mismatch():
    layer = MoE(M, H, E, device="cuda")
    with pytest.raises(ValueError, match="device"):
        layer(torch.randn(T, M))
    with pytest.raises(ValueError, match="w_gate"):
        _C.moe_forward(layer.config(), layer.w_gate.detach().cpu(),
                       *[w.detach() for w in (layer.w1, layer.w3, layer.w2)],
                       torch.randn(T, M, device="cuda"), torch.empty(T, M, device="cuda"),
                       stream=torch.cuda.current_stream().cuda_stream)
