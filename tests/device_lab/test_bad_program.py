"""The device-lab benchmark child on a program the runtime cannot load: the result names
the file and the reason (ExecuTorch would abort the child with no message)."""

from __future__ import annotations

BAD = b"\x1c\x00\x00\x00ET12" + bytes(range(256)) * 16


def test_device_lab_child_names_the_bad_program(tmp_path, tokenizer_file):
    from device_lab_helpers import make_queue

    from device_lab.backends import make_backend
    from device_lab.runner import Runner
    from device_lab.submit import submit_job

    q = make_queue(f"file://{tmp_path}/queue")
    pte = tmp_path / "model.pte"
    pte.write_bytes(BAD)
    bench = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}
    job = submit_job(q, pte, tokenizer_file, bench, backend="local-cpu")
    Runner(q, [make_backend("local-cpu")], tmp_path / "w", poll_s=0.05).serve(idle_exit_s=0)
    result = q.read_result(job)
    assert result["status"] == "error", result
    assert "model.pte" in result["reason"] and "ExecuTorch program" in result["reason"], result


EMPTY_VOCAB = (
    '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
    '"pre_tokenizer":null,"post_processor":null,"decoder":null,'
    '"model":{"type":"BPE","vocab":{},"merges":[]}}'
)


def _one_job(tmp_path, pte, tokenizer, bench):
    from device_lab_helpers import make_queue

    from device_lab.backends import make_backend
    from device_lab.runner import Runner
    from device_lab.submit import submit_job

    q = make_queue(f"file://{tmp_path}/queue")
    job = submit_job(q, pte, tokenizer, bench, backend="local-cpu")
    Runner(q, [make_backend("local-cpu")], tmp_path / "w", poll_s=0.05).serve(idle_exit_s=0)
    return q.read_result(job)


def test_input_dependent_benchmark_loops_are_bounded(tmp_path, llm_pte, tokenizer_file):
    """A tokenizer that yields no tokens fails at once (it used to spin until the job
    timeout); a prompt longer than the program's context is refused before it is built."""
    empty = tmp_path / "empty.json"
    empty.write_text(EMPTY_VOCAB)
    bench = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}
    result = _one_job(tmp_path / "a", llm_pte, empty, bench)
    assert result["status"] == "error" and "no tokens" in result["reason"], result
    result = _one_job(tmp_path / "b", llm_pte, tokenizer_file, dict(bench, prompt_lengths=[1 << 20]))
    assert result["status"] == "error" and "context" in result["reason"], result
    assert str((1 << 20) + 2) in result["reason"]


def test_program_with_the_moe_kernel_but_no_kernel_library(tmp_path, llm_pte, tokenizer_file):
    """A program calling mmoe:: operators, run where the kernel library cannot be loaded:
    status error naming the operator and how to get the library (ExecuTorch alone would
    fail the first forward with a bare "OperatorMissing")."""
    import os

    from mobilemoe_kernels import operators_in

    assert operators_in(llm_pte) == ["mmoe::moe_ffn_f32", "mmoe::attend_kv"]
    bench = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}
    missing = tmp_path / "nowhere" / "libmobilemoe_kernels.so"
    os.environ["MOBILEMOE_KERNELS_LIBRARY"] = str(missing)
    try:
        result = _one_job(tmp_path / "a", llm_pte, tokenizer_file, bench)
    finally:
        del os.environ["MOBILEMOE_KERNELS_LIBRARY"]
    assert result["status"] == "error", result
    reason = result["reason"]
    assert "mmoe::moe_ffn_f32" in reason and str(missing) in reason and "make setup" in reason, reason
    # (With the library the same program runs: tests/device_lab/test_device_profile.py.)
