"""Whole round trips through the command lines: submit -> runner -> result, real ``.pte``.

On a local folder queue and on a real S3-compatible server (SeaweedFS on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_ARGS = [
    "--prompt-lengths",
    "8,24",
    "--decode-tokens",
    "6",
    "--repeats",
    "2",
    "--warmup",
    "1",
    "--threads",
    "1",
]


def _cli(module, *args):
    return [sys.executable, "-m", f"device_lab.{module}", *map(str, args)]


def _round_trip(queue: str, tmp_path: Path, pte: Path, tokenizer: Path, env: dict) -> tuple:
    work = tmp_path / "work"
    runner = subprocess.Popen(
        _cli(
            "runner",
            "--queue",
            queue,
            "--backend",
            "local-cpu",
            "--workdir",
            work,
            "--once",
            "--idle-exit-s",
            120,
            "--poll-s",
            0.1,
            "--lease-s",
            10,
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sub = subprocess.run(
            _cli(
                "submit",
                "--queue",
                queue,
                "--artifact",
                pte,
                "--tokenizer",
                tokenizer,
                *BENCH_ARGS,
                "--label",
                "run=test",
                "--wait",
                120,
                "--poll-s",
                0.1,
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        runner_out, runner_err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert sub.returncode == 0, sub.stderr
    assert runner.returncode == 0, runner_err
    job_id = sub.stderr.strip().splitlines()[-1]
    result = json.loads(sub.stdout)
    return job_id, result, runner_err, work, runner.pid


def _check_ok(job_id, result, work, runner_pid):
    assert result["job_id"] == job_id and result["status"] == "ok" and result["reason"] is None
    assert set(result["prefill_tok_per_s"]) == {"8", "24"}
    assert all(v > 0 for v in result["prefill_tok_per_s"].values())
    assert result["raw"]["decode_op_profile"] is None  # not asked for
    assert isinstance(result["decode_tok_per_s"], float) and result["decode_tok_per_s"] > 0
    runs = result["raw"]["runs"]
    assert sorted((r["prompt_tokens"], r["repeat"]) for r in runs) == [(8, 0), (8, 1), (24, 0), (24, 1)]
    assert all(r["runtime_stats"]["prompt_tokens"] == r["prompt_tokens"] for r in runs), "exact N tokens"
    assert all(r["decode_tokens"] >= 1 for r in runs)
    assert result["raw"]["threads"] == 1
    # Peak memory is the benchmark child's, not the runner's.
    assert result["raw"]["pid"] != runner_pid
    assert result["peak_rss_bytes"] >= result["baseline_rss_bytes"] > 0
    assert result["load_s"] > 0 and result["attempt"] == 1
    assert result["device"]["kind"] == "cpu" and result["device"]["runtime"] == "executorch"
    assert result["labels"] == {"run": "test"} and result["benchmark"]["decode_tokens"] == 6
    # The runner keeps its copy, cleans the downloads, and wrote nowhere else.
    assert (work / "results" / f"{job_id}.json").is_file()
    assert list((work / "jobs").iterdir()) == [] and list((work / "outbox").iterdir()) == []


def test_round_trip_local_folder(tmp_path, llm_pte, tokenizer_file):
    queue = tmp_path / "queue"
    job_id, result, _, work, pid = _round_trip(
        f"file://{queue}", tmp_path, llm_pte, tokenizer_file, dict(os.environ)
    )
    _check_ok(job_id, result, work, pid)
    assert json.loads((queue / "results" / f"{job_id}.json").read_text()) == result
    assert list((queue / "artifacts").iterdir())  # uploaded once per hash
    assert not (queue / "claims").exists() or not any((queue / "claims").rglob("*.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue", "work"]


def test_round_trip_s3(lab_s3, s3_bucket, tmp_path, llm_pte, tokenizer_file):
    s3_server = lab_s3
    env = dict(os.environ, **s3_server.env())
    job_id, result, runner_log, work, pid = _round_trip(
        f"s3://{s3_bucket}/team/queue", tmp_path, llm_pte, tokenizer_file, env
    )
    _check_ok(job_id, result, work, pid)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert f"team/queue/results/{job_id}.json" in keys and f"team/queue/jobs/{job_id}.json" in keys
    assert not [k for k in keys if "/claims/" in k]
    # Credentials never reach logs or documents.
    stored = "".join(p.read_text(errors="replace") for p in work.rglob("*") if p.is_file())
    for secret in (s3_server.secret_key, s3_server.access_key):
        assert secret not in runner_log and secret not in json.dumps(result) and secret not in stored
    # A queue in a bucket that does not exist: one clear error, no retries.
    missing = subprocess.run(
        _cli("submit", "--queue", "s3://no-such-bucket/q", "--result", job_id),
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 3 and "bucket 'no-such-bucket' does not exist" in missing.stderr


def test_submit_exit_codes(tmp_path, fake_pte, small_tokenizer):
    queue = f"file://{tmp_path}/q"
    missing = subprocess.run(
        _cli("submit", "--queue", queue, "--artifact", tmp_path / "nope.pte", "--tokenizer", small_tokenizer),
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "nope.pte is not a file" in missing.stderr
    bad_uri = subprocess.run(
        _cli("submit", "--queue", "q/rel", "--artifact", fake_pte, "--tokenizer", small_tokenizer),
        capture_output=True,
        text=True,
    )
    assert bad_uri.returncode == 2 and "not a queue URI" in bad_uri.stderr
    bad_bench = subprocess.run(
        _cli(
            "submit", "--queue", queue, "--artifact", fake_pte, "--tokenizer", small_tokenizer, "--repeats", 0
        ),
        capture_output=True,
        text=True,
    )
    assert bad_bench.returncode == 2 and "benchmark.repeats" in bad_bench.stderr
    waited = subprocess.run(
        _cli(
            "submit",
            "--queue",
            queue,
            "--artifact",
            fake_pte,
            "--tokenizer",
            small_tokenizer,
            "--backend",
            "artifact-check",
            "--wait",
            0.2,
            "--poll-s",
            0.05,
        ),
        capture_output=True,
        text=True,
    )
    assert waited.returncode == 5 and "no result within" in waited.stderr and waited.stdout == ""
    job_id = waited.stderr.splitlines()[0]
    runner = subprocess.run(
        _cli(
            "runner", "--queue", queue, "--backend", "artifact-check", "--workdir", tmp_path / "w", "--once"
        ),
        capture_output=True,
        text=True,
    )
    assert runner.returncode == 0, runner.stderr
    fetched = subprocess.run(
        _cli("submit", "--queue", queue, "--result", job_id), capture_output=True, text=True
    )
    assert fetched.returncode == 0 and json.loads(fetched.stdout)["status"] == "ok"
    unreachable = subprocess.run(
        _cli(
            "submit",
            "--queue",
            "s3://lab/q",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--retry-attempts",
            2,
            "--result",
            job_id,
        ),
        capture_output=True,
        text=True,
        env=dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s3cr3t"),
    )
    assert unreachable.returncode == 3 and "after 2 attempts" in unreachable.stderr
    assert "s3cr3t" not in unreachable.stderr and "Traceback" not in unreachable.stderr


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--queue", "file:///tmp/x", "--backend", "phone"], 2),
        (["--queue", "ftp://x/y"], 2),
        (["--queue", "file:///tmp/x", "--lease-s", "0"], 2),
    ],
)
def test_runner_bad_arguments(argv, code):
    out = subprocess.run(_cli("runner", *argv, "--once"), capture_output=True, text=True)
    assert out.returncode == code and out.stderr.startswith("error:") and "Traceback" not in out.stderr
