"""The kernel through ExecuTorch for real: export, lower (XNNPACK), run the .pte; eager op; and
the error when the library is not loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers_kernels import close, make_inputs, make_weights

import mobilemoe_kernels
import mobilemoe_kernels.ops  # noqa: F401

NAMES = ("w13_packed", "w13_scales", "w13_corr", "w2_packed", "w2_scales", "w2_corr")
E, D, H, K = 4, 64, 32, 2


class Tiny(torch.nn.Module):
    def __init__(self, pk):
        super().__init__()
        self.proj = torch.nn.Linear(D, D)
        for n in NAMES:
            self.register_buffer(n, pk[n])

    def forward(self, x, ids, gates):
        h = self.proj(x)
        return torch.ops.mmoe.moe_ffn_8da4w(h, ids, gates, *[getattr(self, n) for n in NAMES]) + h


class TinyF32(torch.nn.Module):
    def __init__(self, w13, w2):
        super().__init__()
        self.register_buffer("w13", w13)
        self.register_buffer("w2", w2)

    def forward(self, x, ids, gates):
        return torch.ops.mmoe.moe_ffn_f32(x, ids, gates, self.w13, self.w2)


def _export(model, path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    T = torch.export.Dim("T", min=1, max=64)
    ex = make_inputs(3, K, E, D)
    ep = torch.export.export(model, ex, dynamic_shapes=({0: T}, {0: T}, {0: T}), strict=False)
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    from mobilemoe_kernels.build import build

    build()
    torch.manual_seed(0)
    w13, w2, pk = make_weights(E, D, H)
    tmp = tmp_path_factory.mktemp("pte")
    m8, m32 = Tiny(pk).eval(), TinyF32(w13, w2).eval()
    return {
        "8da4w": (m8, _export(m8, tmp / "moe_8da4w.pte")),
        "f32": (m32, _export(m32, tmp / "moe_f32.pte")),
    }


def test_eager_ops_and_out_variant():
    _, _, pk = make_weights(E, D, H)
    x, ids, gates = make_inputs(5, K, E, D)
    y = torch.ops.mmoe.moe_ffn_8da4w(x, ids, gates, *[pk[n] for n in NAMES])
    out = torch.empty(0)
    torch.ops.mmoe.moe_ffn_8da4w.out(x, ids, gates, *[pk[n] for n in NAMES], out=out)
    assert torch.equal(y, out) and y.shape == (5, D)
    bad = ids.clone()
    bad[0, 0] = E
    with pytest.raises((ValueError, RuntimeError), match=f"expert id {E}"):
        torch.ops.mmoe.moe_ffn_8da4w(x, bad, gates, *[pk[n] for n in NAMES])


@pytest.mark.parametrize("kind", ["8da4w", "f32"])
def test_pte_matches_eager(programs, kind):
    from executorch.extension.pybindings import _C

    mobilemoe_kernels.load()
    model, path = programs[kind]
    method = _C._load_for_executorch(str(path))
    for T in (1, 5):
        x, ids, gates = make_inputs(T, K, E, D, seed=T)
        got = method.forward((x, ids, gates))[0]
        with torch.no_grad():
            want = model(x, ids, gates)
        assert got.shape == (T, D)
        ok, err, tol = close(got, want, flips_ok=(kind == "8da4w"))
        assert ok, f"{kind} T={T}: {err} > {tol}"


def test_pte_rejects_bad_expert_id(programs):
    from executorch.extension.pybindings import _C

    mobilemoe_kernels.load()
    method = _C._load_for_executorch(str(programs["8da4w"][1]))
    x, ids, gates = make_inputs(2, K, E, D)
    ids[1, 0] = 7
    with pytest.raises(RuntimeError):
        method.forward((x, ids, gates))


def test_pte_without_library_fails_clearly(programs):
    code = textwrap.dedent(
        f"""
        import sys, torch
        from executorch.extension.pybindings import _C
        try:
            m = _C._load_for_executorch({str(programs["8da4w"][1])!r})
            x = torch.randn(1, {D})
            m.forward((x, torch.zeros(1, {K}, dtype=torch.int64), torch.ones(1, {K})))
        except Exception as e:
            print("EXC", type(e).__module__, type(e).__name__, str(e))
            sys.exit(3)
        print("LOADED")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "mmoe::moe_ffn_8da4w.out" in res.stderr  # ExecuTorch's log names the missing operator


def test_load_is_idempotent_and_guarded(monkeypatch):
    p = mobilemoe_kernels.load()
    assert mobilemoe_kernels.load() == p and mobilemoe_kernels.is_loaded()
    assert mobilemoe_kernels.OPERATORS == ("mmoe::moe_ffn_8da4w", "mmoe::moe_ffn_f32", "mmoe::attend_kv")


def test_missing_library_error(tmp_path):
    code = textwrap.dedent(
        """
        import mobilemoe_kernels, pathlib
        mobilemoe_kernels.library_path = lambda: pathlib.Path('/nonexistent/libmobilemoe_kernels.so')
        try:
            mobilemoe_kernels.load()
        except mobilemoe_kernels.KernelLibraryError as e:
            assert isinstance(e, RuntimeError)
            print('OK', e)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "OK" in res.stdout and "mobilemoe_kernels.build" in res.stdout, res.stdout + res.stderr


def test_import_is_cheap():
    res = subprocess.run(
        [sys.executable, "-c", "import sys, mobilemoe_kernels; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.stdout.strip() == "False", res.stdout + res.stderr
