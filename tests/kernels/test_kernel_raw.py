"""C++ kernels (raw ctypes entry points) vs the pure-torch reference, for every ISA here."""

from __future__ import annotations

import pytest
import torch
from helpers_kernels import close, make_inputs, make_weights, raw_8da4w, raw_f32

import mobilemoe_kernels
from mobilemoe_kernels.reference import moe_ffn_8da4w_reference, moe_ffn_f32_reference

NAMES = ("w13_packed", "w13_scales", "w13_corr", "w2_packed", "w2_scales", "w2_corr")


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


CASES = [  # T, K, E, D, H
    (1, 1, 1, 64, 32),
    (1, 2, 4, 128, 64),
    (3, 4, 4, 64, 64),
    (17, 2, 8, 128, 32),
    (17, 8, 8, 64, 64),
    (128, 1, 8, 64, 32),
    (128, 2, 4, 128, 64),
]


def test_isa_name(lib):
    assert mobilemoe_kernels.isa() in ("portable", "avx2", "avx512vnni", "neon")
    assert lib.mmoe_set_isa(b"bogus") == -1


@pytest.mark.parametrize("T,K,E,D,H", CASES)
def test_8da4w_and_f32_match_reference(lib, T, K, E, D, H):
    w13, w2, pk = make_weights(E, D, H, seed=T + K)
    x, ids, gates = make_inputs(T, K, E, D, seed=E + D)
    ref = moe_ffn_8da4w_reference(x, ids, gates, *[pk[n] for n in NAMES])
    ref32 = moe_ffn_f32_reference(x, ids, gates, w13, w2)
    for isa in _isas(lib):
        assert lib.mmoe_set_isa(isa.encode()) == 0
        rc, out = raw_8da4w(lib, x, ids, gates, pk)
        assert rc == 0
        ok, err, tol = close(out, ref, flips_ok=True)
        assert ok, f"{isa} 8da4w T={T} K={K} E={E}: max err {err} > {tol}"
        rc, out32 = raw_f32(lib, x, ids, gates, w13, w2)
        assert rc == 0
        ok, err, tol = close(out32, ref32)
        assert ok, f"{isa} f32 T={T} K={K} E={E}: max err {err} > {tol}"


def test_experts_without_tokens_and_repeated_ids(lib):
    E, D, H = 8, 64, 32
    w13, w2, pk = make_weights(E, D, H)
    x, _, gates = make_inputs(9, 2, E, D)
    ids = torch.tensor([[5, 2]] * 9, dtype=torch.int64)  # only experts 2 and 5 have tokens
    ref = moe_ffn_8da4w_reference(x, ids, gates, *[pk[n] for n in NAMES])
    for isa in _isas(lib):
        lib.mmoe_set_isa(isa.encode())
        rc, out = raw_8da4w(lib, x, ids, gates, pk)
        assert rc == 0 and close(out, ref, flips_ok=True)[0]


def test_thread_count_does_not_change_result(lib):
    from executorch.extension.pybindings import _C

    E, D, H = 8, 128, 64
    _, _, pk = make_weights(E, D, H)
    x, ids, gates = make_inputs(37, 4, E, D)
    try:
        for isa in _isas(lib):
            lib.mmoe_set_isa(isa.encode())
            _C._unsafe_reset_threadpool(1)
            _, a = raw_8da4w(lib, x, ids, gates, pk)
            _C._unsafe_reset_threadpool(2)
            _, b = raw_8da4w(lib, x, ids, gates, pk)
            assert torch.equal(a, b), isa
    finally:
        _C._unsafe_reset_threadpool(1)


@pytest.mark.parametrize("bad", [8, -1, 1000])
def test_out_of_range_id_rejected(lib, bad):
    E, D, H = 8, 64, 32
    w13, w2, pk = make_weights(E, D, H)
    x, ids, gates = make_inputs(4, 2, E, D)
    ids[2, 1] = bad
    rc, out = raw_8da4w(lib, x, ids, gates, pk)
    assert rc != 0
    assert str(bad) in lib.mmoe_last_error().decode()
    assert torch.isnan(out).all()  # nothing written
    rc, _ = raw_f32(lib, x, ids, gates, w13, w2)
    assert rc != 0
    with pytest.raises(ValueError, match=str(bad)):
        moe_ffn_8da4w_reference(x, ids, gates, *[pk[n] for n in NAMES])
