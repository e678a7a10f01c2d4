"""The device-lab benchmark child on a program the runtime cannot load: the result names
the file and the reason (ExecuTorch would abort the child with no message)."""

from __future__ import annotations

BAD = b"\x1c\x00\x00\x00ET12" + bytes(range(256)) * 16


def test_device_lab_child_names_the_bad_program(tmp_path, tokenizer_file):
    from device_lab.runner import Runner
    from device_lab.backends import make_backend
    from device_lab.submit import submit_job
    from device_lab_helpers import make_queue

    q = make_queue(f"file://{tmp_path}/queue")
    pte = tmp_path / "model.pte"
    pte.write_bytes(BAD)
    bench = {"prompt_lengths": [8], "decode_tokens": 2, "repeats": 1, "warmup": 0, "threads": 1}
    job = submit_job(q, pte, tokenizer_file, bench, backend="local-cpu")
    Runner(q, [make_backend("local-cpu")], tmp_path / "w", poll_s=0.05).serve(idle_exit_s=0)
    result = q.read_result(job)
    assert result["status"] == "error", result
    assert "model.pte" in result["reason"] and "ExecuTorch program" in result["reason"], result
