"""``mobilemoe.device_profile``: the flow's profiling step as a function, embedded runner."""

from __future__ import annotations

import dataclasses
import statistics
import threading

import pytest

from mobilemoe.config import load_preset
from mobilemoe.config.base import ConfigError
from mobilemoe.device_profile import (
    DeviceProfileTimeout,
    bytes_metrics,
    decode_ops,
    plot_tok_per_s,
    profile_metrics,
    run_device_profile,
)
from mobilemoe.preflight import preflight


def test_embedded_lab_profiles_the_program(tmp_path, llm_pte, tokenizer_file):
    params = load_preset(
        "smoke", ["device_lab.prompt_lengths=[8, 32]", "device_lab.decode_tokens=4", "device_lab.poll_s=0.1"]
    )
    result = run_device_profile(params, llm_pte, tokenizer_file, tmp_path, labels={"stage": "export"})
    assert result["status"] == "ok", result["reason"]
    assert set(result["prefill_tok_per_s"]) == {"8", "32"} and result["decode_tok_per_s"] > 0
    assert result["labels"] == {"stage": "export"}
    # The child's own peak, not this (much bigger) process's size inherited at fork: the
    # tiny program adds a few MB over the interpreter and runtime libraries.
    assert 0 < result["peak_rss_bytes"] - result["baseline_rss_bytes"] < 64 * 2**20
    assert not [t for t in threading.enumerate() if t.name == "device-lab-local-runner"]
    assert (tmp_path / "device_lab" / "queue" / "results").is_dir()

    metrics = profile_metrics(result)
    assert set(metrics) == {
        "device_decode_tok_per_s",
        "device_prefill_tok_per_s_8",
        "device_prefill_tok_per_s_32",
        "device_load_s",
        "device_peak_rss_bytes",
        "device_program_rss_bytes",
    }
    assert metrics["device_prefill_tok_per_s_8"] == result["prefill_tok_per_s"]["8"]

    # One decode step's per-operator times (ETDump), asked for by the flow's job: the MoE
    # layers' top-k kernel among them, slowest first.
    assert result["benchmark"]["op_profile"] is True
    prof = result["raw"]["decode_op_profile"]
    assert "error" not in prof, prof
    assert any("moe_ffn_f32" in op for op, _, _ in decode_ops(result, top=100)), prof
    assert prof["total_ms"] > 0
    assert [o["ms"] for o in prof["ops"]] == sorted((o["ms"] for o in prof["ops"]), reverse=True)
    # What a decoded token reads, and the bandwidth that implies at the measured speed.
    b = bytes_metrics(params, result)
    assert b["device_active_weight_bytes_per_token"] < b["device_total_weight_bytes"]
    # KV bytes: the slots read at the middle of the decode after the median prompt
    lab, m = params.device_lab, params.model
    pos = int(statistics.median(lab.prompt_lengths)) + lab.decode_tokens // 2
    assert b["device_kv_position"] == pos
    per_slot = 2 * m.n_kv_heads * m.resolved_head_dim * 4  # K and V, fp32
    assert m.sliding_window is None and b["device_kv_bytes_per_token"] == per_slot * m.n_layers * (pos + 1)
    assert b["device_decode_bandwidth_gb_s"] == pytest.approx(
        (b["device_active_weight_bytes_per_token"] + b["device_kv_bytes_per_token"])
        * result["decode_tok_per_s"]
        / 1e9
    )

    fig = plot_tok_per_s(result)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["prefill", "decode"]
    assert list(ax.get_lines()[0].get_xdata()) == [8, 32]
    fig.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_bad_settings_and_no_runner(tmp_path, fake_pte, small_tokenizer):
    with pytest.raises(ConfigError, match="120 \\+ decode_tokens 16 exceeds the exported context 128"):
        load_preset("smoke", ["device_lab.prompt_lengths=[120]", "device_lab.decode_tokens=16"])
    fits = load_preset("smoke")  # built in code, past the params check: the call checks again
    too_long = dataclasses.replace(
        fits, device_lab=dataclasses.replace(fits.device_lab, prompt_lengths=[120], decode_tokens=16)
    )
    with pytest.raises(ConfigError, match="do not fit the program's context"):
        run_device_profile(too_long, fake_pte, small_tokenizer, tmp_path)
    phone = load_preset("smoke", ["device_lab.backend=android-adb"])
    with pytest.raises(ConfigError, match="device_lab.backend: 'android-adb' cannot run"):
        run_device_profile(phone, fake_pte, small_tokenizer, tmp_path)
    nobody = load_preset(
        "smoke",
        [f"device_lab.queue=file://{tmp_path}/lab", "device_lab.timeout_s=0.3", "device_lab.poll_s=0.05"],
    )
    with pytest.raises(DeviceProfileTimeout, match="--result j-"):
        run_device_profile(nobody, fake_pte, small_tokenizer, tmp_path)
    with pytest.raises(ConfigError, match="device_lab.queue"):
        preflight(load_preset("smoke", ["device_lab.queue=s3://key:secret@bucket/q"]))
    assert profile_metrics({"status": "rejected"}) == {}
    assert plot_tok_per_s({"status": "error", "reason": "boom"}).axes


@pytest.mark.slow
def test_embedded_lab_profiles_an_xnnpack_program(tmp_path, llm_pte_xnnpack, tokenizer_file):
    """The delegated program (what the exporter ships), with the smoke preset's settings."""
    params = load_preset("smoke", ["device_lab.poll_s=0.1", "device_lab.repeats=3"])
    result = run_device_profile(params, llm_pte_xnnpack, tokenizer_file, tmp_path)
    assert result["status"] == "ok", result["reason"]
    assert set(result["prefill_tok_per_s"]) == {"16"} and result["decode_tok_per_s"] > 0
    print("xnnpack smoke profile:", profile_metrics(result))


def test_a_runner_that_cannot_start_is_reported_not_timed_out(tmp_path, fake_pte, small_tokenizer):
    import fcntl

    from mobilemoe.errors import UserError

    lock_dir = tmp_path / "device_lab" / "runner"
    lock_dir.mkdir(parents=True)
    with open(lock_dir / ".lock", "w") as held:  # another runner holds this work folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        params = load_preset("smoke", ["device_lab.timeout_s=60", "device_lab.poll_s=0.05"])
        with pytest.raises(UserError, match="embedded device-lab runner stopped .*in use"):
            run_device_profile(params, fake_pte, small_tokenizer, tmp_path)
