"""mmoe::attend_kv (attention reading only the KV slots a query may see) against a plain
PyTorch attention: the C++ kernel for every ISA here, the eager torch op, and a real
ExecuTorch program; and its errors."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

import mobilemoe_kernels
import mobilemoe_kernels.ops  # noqa: F401


def plain_attention(q_THd, k_KdS, v_KSd, pos_T, window):
    """Eager-model style: repeat KV heads for GQA, boolean mask over every slot, SDPA."""
    T, H, hd = q_THd.shape
    KV, S = v_KSd.shape[0], v_KSd.shape[1]
    rep = H // KV
    # NaN marks slots no query may read: the mask drops them, but 0 * NaN would not.
    k = k_KdS[:, :, :S].nan_to_num().transpose(1, 2).repeat_interleave(rep, 0)  # [H, S, hd]
    v = v_KSd.nan_to_num().repeat_interleave(rep, 0)
    slots = torch.arange(S)
    mask = slots[None, :] <= pos_T[:, None]
    if window:
        mask &= (pos_T[:, None] - slots[None, :]) < window
    out = F.scaled_dot_product_attention(q_THd.transpose(0, 1), k, v, attn_mask=mask)  # [H, T, hd]
    return out.transpose(0, 1)


def random_case(T, H, KV, hd, S, p0, seed, pad=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(KV, hd, S + pad, generator=g)
    v = torch.randn(KV, S, hd, generator=g)
    k[:, :, p0 + T :] = float("nan")  # unwritten slots must never be read
    v[:, p0 + T :] = float("nan")
    q = 2 * torch.randn(T, H, hd, generator=g)
    return q, k, v, torch.arange(p0, p0 + T)


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


def raw_attend(lib, q, k, v, pos, window):
    T, H, hd = q.shape
    KV, S = v.shape[0], v.shape[1]
    out = torch.full_like(q, float("nan"))
    rc = lib.mmoe_attend_kv_raw(_p(q), _p(k), _p(v), _p(pos), T, H, KV, S, k.shape[2], hd, window, _p(out))
    return rc, out


@pytest.fixture(scope="module")
def lib():
    from mobilemoe_kernels.build import build

    build()
    lib = mobilemoe_kernels.raw()
    best = mobilemoe_kernels.isa()
    yield lib
    lib.mmoe_set_isa(best.encode())


def _isas(lib):
    return [i for i in ("portable", "avx2", "avx512vnni", "neon") if lib.mmoe_set_isa(i.encode()) == 0]


SHAPES = [  # H, KV, hd, S
    (12, 4, 64, 300),  # MobileMoE-S heads (GQA rep 3)
    (20, 4, 64, 300),  # MobileLLM-Pro heads (rep 5)
    (4, 4, 16, 70),  # MHA, hd one vector
    (6, 2, 20, 50),  # hd not a multiple of 8 or 16; S not a multiple of the tiles
]
QUERIES = [  # T, first position ("end": the last T slots)
    (1, 0),
    (1, 33),
    (1, "end"),
    (9, 0),
    (5, 21),
    (8, "end"),
]
WINDOWS = [0, 1, 7, 64, 10_000]


@pytest.mark.parametrize("H,KV,hd,S", SHAPES)
def test_kernel_matches_plain_attention(lib, H, KV, hd, S):
    for isa in _isas(lib):
        lib.mmoe_set_isa(isa.encode())
        for i, (T, p0) in enumerate(QUERIES):
            p0 = S - T if p0 == "end" else p0
            q, k, v, pos = random_case(T, H, KV, hd, S, p0, seed=i, pad=16 * (i % 2))
            for window in WINDOWS:
                rc, got = raw_attend(lib, q, k, v, pos, window)
                want = plain_attention(q, k, v, pos, window)
                assert rc == 0
                err = float((got - want).abs().max())
                assert err <= 2e-5, (isa, T, p0, window, err)


def test_kernel_rejects_bad_positions_and_heads(lib):
    q, k, v, pos = random_case(2, 4, 2, 16, 20, 0, seed=0)
    rc, _ = raw_attend(lib, q, k, v, torch.tensor([3, 20]), 0)
    assert rc == 1 and b"position 20" in lib.mmoe_last_error()
    rc, _ = raw_attend(lib, q, k, v, torch.tensor([-1, 0]), 0)
    assert rc == 1
    rc, _ = raw_attend(lib, torch.randn(2, 3, 16), k, v, pos, 0)
    assert rc == 1 and b"multiple" in lib.mmoe_last_error()


def test_kernel_is_thread_count_invariant(lib):
    from executorch.extension.pybindings import _C

    q, k, v, pos = random_case(16, 12, 4, 64, 200, 100, seed=3)
    outs = []
    for threads in (1, 2):
        _C._unsafe_reset_threadpool(threads)
        outs.append(raw_attend(lib, q, k, v, pos, 32)[1])
    _C._unsafe_reset_threadpool(1)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("window", [0, 5])
def test_eager_op_matches_plain_attention(window):
    q, k, v, pos = random_case(6, 8, 2, 16, 40, 11, seed=window)
    got = torch.ops.mmoe.attend_kv(q, k, v, pos, window)
    out = torch.empty(0)
    torch.ops.mmoe.attend_kv.out(q, k, v, pos, window, out=out)
    want = plain_attention(q, k, v, pos, window)
    assert got.shape == q.shape and got.is_contiguous()
    assert torch.equal(got, out) and float((got - want).abs().max()) <= 1e-5


def test_eager_op_errors():
    q, k, v, pos = random_case(2, 4, 2, 16, 20, 0, seed=0)
    with pytest.raises((ValueError, RuntimeError), match="position 20"):
        torch.ops.mmoe.attend_kv(q, k, v, torch.tensor([3, 20]), 0)
    with pytest.raises((ValueError, RuntimeError), match="multiple of KV"):
        torch.ops.mmoe.attend_kv(torch.randn(2, 3, 16), k, v, pos, 0)
    with pytest.raises((ValueError, RuntimeError), match="window"):
        torch.ops.mmoe.attend_kv(q, k, v, pos, -1)


class CachedAttention(torch.nn.Module):
    """Writes the call's K/V into static caches in place, then attends (as the exporter does)."""

    def __init__(self, H, KV, hd, S, window):
        super().__init__()
        self.window = window
        self.register_buffer("k_cache_T", torch.zeros(KV, hd, S))
        self.register_buffer("v_cache", torch.zeros(KV, S, hd))

    def forward(self, q_THd, k_TKd, v_TKd, input_pos):
        self.k_cache_T.index_copy_(2, input_pos, k_TKd.permute(1, 2, 0))
        self.v_cache.index_copy_(1, input_pos, v_TKd.permute(1, 0, 2))
        return torch.ops.mmoe.attend_kv(q_THd, self.k_cache_T, self.v_cache, input_pos, self.window)


H, KV, HD, S = 6, 2, 32, 64


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    from mobilemoe_kernels.build import build

    build()
    T = torch.export.Dim("T", min=1, max=S)
    example = (torch.randn(2, H, HD), torch.randn(2, KV, HD), torch.randn(2, KV, HD), torch.arange(2))
    ep = torch.export.export(
        CachedAttention(H, KV, HD, S, 9).eval(),
        example,
        dynamic_shapes=({0: T}, {0: T}, {0: T}, {0: T}),
        strict=False,
    )
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch(
        ExecutorchBackendConfig(run_reinplace_pass=True)
    )
    path = tmp_path_factory.mktemp("pte") / "attend.pte"
    path.write_bytes(prog.buffer)
    return path


def test_program_matches_plain_attention_over_a_sequence(program):
    """Prefill, decode steps and a chunk through one program: each call sees what earlier
    calls wrote (the cache writes stay in place) and no slot beyond its window."""
    from executorch.extension.pybindings import _C

    assert mobilemoe_kernels.load_for(program) == ["mmoe::attend_kv"]
    method = _C._load_for_executorch(str(program))
    g = torch.Generator().manual_seed(0)
    k_all, v_all = torch.randn(S, KV, HD, generator=g), torch.randn(S, KV, HD, generator=g)
    for start, end in ((0, 20), (20, 21), (21, 22), (22, 40), (40, 41), (41, S)):
        q = torch.randn(end - start, H, HD, generator=g)
        pos = torch.arange(start, end)
        got = method.forward((q, k_all[start:end], v_all[start:end], pos))[0]
        k_seen = k_all.permute(1, 2, 0).clone()
        k_seen[:, :, end:] = 0.0
        want = plain_attention(q, k_seen, v_all.permute(1, 0, 2).contiguous(), pos, 9)
        assert float((got - want).abs().max()) <= 2e-5, (start, end)


def test_program_rejects_a_position_beyond_the_cache(program):
    from executorch.extension.pybindings import _C

    mobilemoe_kernels.load()
    method = _C._load_for_executorch(str(program))
    with pytest.raises(RuntimeError):
        method.forward(
            (torch.randn(1, H, HD), torch.randn(1, KV, HD), torch.randn(1, KV, HD), torch.tensor([S + 3]))
        )
