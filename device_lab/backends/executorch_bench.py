"""The ``local-cpu`` benchmark child: run a ``.pte`` with ExecuTorch's LLM runner.

Started by :class:`LocalCpuBackend` as ``python -m device_lab.backends.executorch_bench
--spec spec.json --out out.json``; never run by hand. For each prompt length N it builds
a prompt of exactly N tokens (checked against the runtime's own count), runs ``warmup``
unrecorded and ``repeats`` recorded generations of ``decode_tokens`` new tokens, greedy,
resetting the KV cache between runs, and reports:

* prefill tok/s = N / (time from ``generate`` to the first token callback),
* decode tok/s  = (tokens after the first) / (time from the first to the last callback),
  timed with ``perf_counter`` in this process (ExecuTorch's own stats, kept per repeat in
  ``raw``, tick in whole milliseconds: too coarse for small programs),
* load_s = runner construction + the runtime's method load,
* peak_rss_bytes = this process's peak RSS (VmHWM); baseline_rss_bytes = its RSS before
  loading the program (interpreter + runtime libraries).

Medians over repeats per prompt length; ``decode_tok_per_s`` is the median over all runs.
A program that ends generation early (an EOS) reports the tokens it actually made.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from .base import BackendError, child_main, peak_rss_bytes, rss_now_bytes

# Neutral English text for prompts (tokens of real words route like real text would).
_TEXT = (
    "The river runs past the old mill and under the stone bridge before it reaches the "
    "town. In spring the water is high and fast, and children watch the boats from the "
    "bank while their parents buy bread at the market. A small library stands near the "
    "square; its windows face the hills, where farmers grow wheat, apples and grapes. "
    "Every evening the baker closes his shop, counts the coins in a wooden box, and walks "
    "home along the river with a lamp in his hand. The town council meets on Mondays to "
    "discuss roads, schools, water and the price of grain, and the notes of each meeting "
    "are kept in the library for anyone who wants to read them. Travellers often stop for "
    "a night at the inn, tell stories of distant cities, and leave early the next morning."
)
_FILLERS = (" the", " a", " and", " of", " to", " in", " is", " it", " on", " at", " be")


def _text_of_at_least(count, n_tokens: int) -> str:
    """Enough copies of the reference text for ``n_tokens`` tokens, in a number of steps
    fixed up front: a tokenizer that yields no (or too few) tokens is an error, never a
    loop that runs until the job's timeout."""
    per_copy = count(_TEXT)
    if per_copy < 1:
        raise BackendError(
            "the tokenizer encodes the reference text to no tokens (empty "
            "vocabulary?); cannot build benchmark prompts with it"
        )
    text = " ".join([_TEXT] * (n_tokens // per_copy + 2))
    if count(text) < n_tokens:
        raise BackendError(f"the tokenizer cannot make a prompt of {n_tokens} tokens from the reference text")
    return text


def exact_prompt(tok, n_tokens: int) -> str:
    """Real text that encodes to exactly ``n_tokens`` tokens with ``tok`` (no specials)."""

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    filler = next((f for f in _FILLERS if count(f) == 1 and count(f * 3) == 3), None)
    text = _text_of_at_least(count, n_tokens)
    # Cut at pre-token boundaries (BPE never merges across them), then top up with a
    # one-token word; the final full encode is the check.
    pieces = tok.pre_tokenizer.pre_tokenize_str(text) if tok.pre_tokenizer else [(text, (0, len(text)))]
    have, end = 0, 0
    for _, (start, stop) in pieces:
        k = count(text[start:stop])
        if have + k > n_tokens:
            break
        have, end = have + k, stop
    prompt = text[:end] + (filler or "") * (n_tokens - have)
    if count(prompt) != n_tokens and filler:
        prompt = filler.lstrip() + filler * (n_tokens - 1)
    if count(prompt) != n_tokens:
        raise BackendError(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")
    return prompt


def _one_run(runner, GenerationConfig, prompt: str, decode_tokens: int, warm: bool) -> dict:
    stamps: list[float] = []
    stats: list[str] = []
    config = GenerationConfig(
        max_new_tokens=decode_tokens, temperature=0.0, echo=False, warming=warm, num_bos=0, num_eos=0
    )
    t0 = time.perf_counter()
    try:
        runner.generate(
            prompt,
            config,
            token_callback=lambda _s: stamps.append(time.perf_counter()),
            stats_callback=lambda s: stats.append(s.to_json_string()),
        )
    except UnicodeError:
        # The binding hands each token's text to the callback as a strict UTF-8 str, so a
        # token holding part of a multi-byte character fails before our callback runs.
        # Measure this run again with ExecuTorch's own (millisecond) timing stats instead.
        runner.reset()
        stats.clear()
        runner.generate(prompt, config, stats_callback=lambda s: stats.append(s.to_json_string()))
        runner.reset()
        return _from_runtime_stats(json.loads(stats[-1]) if stats else {})
    runner.reset()  # KV cache position back to 0 for the next run
    et = json.loads(stats[-1]) if stats else {}
    if not stamps:
        raise BackendError("the runtime generated no token")
    n_decode = len(stamps) - 1
    decode_s = stamps[-1] - stamps[0]
    return {
        "prefill_s": stamps[0] - t0,
        "decode_s": decode_s,
        "decode_tokens": n_decode,
        "decode_tok_per_s": n_decode / decode_s if n_decode and decode_s > 0 else None,
        "runtime_stats": et,
    }


def _from_runtime_stats(et: dict) -> dict:
    """One run's numbers from ExecuTorch's stats (``PyTorchObserver`` fields, in ms)."""
    try:
        n = int(et["generated_tokens"])
        prefill_s = (et["first_token_ms"] - et["inference_start_ms"]) / 1000
        decode_s = (et["inference_end_ms"] - et["first_token_ms"]) / 1000
    except (KeyError, TypeError, ValueError):
        raise BackendError("the runtime reported no timing stats for a run") from None
    if n < 1:
        raise BackendError("the runtime generated no token")
    n_decode = n - 1
    return {
        "prefill_s": max(prefill_s, 1e-3),
        "decode_s": decode_s,
        "decode_tokens": n_decode,
        "decode_tok_per_s": n_decode / decode_s if n_decode and decode_s > 0 else None,
        "runtime_stats": et,
        "timing": "executorch stats (ms resolution)",
    }


def _refuse_unloadable(program: str) -> None:
    """Probe the program in a child first: ExecuTorch aborts (no exception) on some corrupt
    files, which would leave only "crashed (SIGABRT)" instead of a reason."""
    from ..program_probe import probe_program

    if (problem := probe_program(program)) is not None:
        raise BackendError(f"job.artifact ({Path(program).name}): {problem}")


def _load_moe_kernels(program: str) -> None:
    """Programs exported with mobilemoe's top-k MoE kernel call ``mmoe::`` operators that
    live in its library; without it the runner fails with a bare "OperatorMissing"."""
    try:
        import mobilemoe_kernels
    except ImportError:
        import mmap

        with open(program, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            calls = data.find(b"mmoe::") >= 0
        if calls:
            raise BackendError(
                f"job.artifact ({Path(program).name}) calls mmoe:: operators "
                "(mobilemoe's MoE kernel) but the package mobilemoe_kernels is "
                "not importable here; install the project (make setup)"
            ) from None
        return
    try:
        mobilemoe_kernels.load_for(program)
    except mobilemoe_kernels.KernelLibraryError as e:
        raise BackendError(f"job.artifact ({Path(program).name}): {e}") from None


def decode_op_profile(program: str, prompt_ids: list[int], etdump_path: Path) -> dict:
    """Per-operator times of one decode step (ExecuTorch ETDump), after a prefill of
    ``prompt_ids``: {"ops": [{"op", "ms", "calls"}, ...] (slowest first), "total_ms"}.

    Runs the program's ``forward`` through the pybindings with ETDump on (the runner has no
    ETDump hook): execution 1 is the prefill, execution 2 the decode step. XNNPACK reports
    its own operators inside the delegate call ("Fully Connected (NC, QDU8, F32, QB4W)"
    and so on); portable and custom kernels are "native_call_<op>". Times in ms as the
    runtime records them (XNNPACK's are whole microseconds).
    """
    import re

    import torch

    try:
        from executorch.extension.pybindings import _C as rt
    except ImportError:
        from executorch.extension.pybindings import portable_lib as rt
    from executorch.devtools import Inspector

    module = rt._load_for_executorch(program, enable_etdump=True)
    n = len(prompt_ids)
    module.forward((torch.tensor([prompt_ids]), torch.arange(n)))
    module.forward((torch.tensor([[prompt_ids[-1]]]), torch.tensor([n])))
    module.write_etdump_result_to_file(str(etdump_path))
    inspector = Inspector(etdump_path=str(etdump_path))
    per_op: dict[str, list[float]] = {}
    total = 0.0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            raw = event.perf_data.raw if event.perf_data is not None else None
            if not raw or len(raw) < 2 or event.name in ("OPERATOR_CALL",):
                continue
            name = re.sub(r" #\d+$", "", event.name)
            if name == "DELEGATE_CALL" or name.startswith("Method::"):
                continue
            per_op.setdefault(name, []).append(float(raw[-1]))
            total += float(raw[-1])
    ops = sorted(
        ({"op": k, "ms": sum(v), "calls": len(v)} for k, v in per_op.items()), key=lambda r: -float(r["ms"])
    )
    return {
        "ops": ops,
        "total_ms": total,
        "prompt_tokens": n,
        "how": "ETDump of one decode step after a prefill, pybindings forward",
    }


def _check_context(spec: dict) -> None:
    """Refuse prompt lengths the program cannot hold before any prompt is built (building a
    2^20-token prompt is itself minutes of work): prompt + decode tokens must fit the
    program's KV cache (get_max_context_len, else get_max_seq_len)."""
    try:
        from executorch.extension.pybindings import _C as rt
    except ImportError:
        from executorch.extension.pybindings import portable_lib as rt
    try:
        module = rt._load_for_executorch(spec["program"])
        names = set(module.method_names())
        method = next((m for m in ("get_max_context_len", "get_max_seq_len") if m in names), None)
        context = int(module.run_method(method, ())[0]) if method else None
    except RuntimeError:
        return  # the runner's own load reports it
    if context is None:
        return
    need = max(spec["prompt_lengths"]) + spec["decode_tokens"]
    if need > context:
        raise BackendError(
            f"job.benchmark: a prompt of {max(spec['prompt_lengths'])} tokens + "
            f"{spec['decode_tokens']} new needs {need} positions; the program's "
            f"context ({method}) is {context}"
        )


def bench(spec: dict) -> dict:
    threads = int(spec["threads"])
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BackendError("the local-cpu backend needs the `tokenizers` package") from None
    try:
        tok = Tokenizer.from_file(spec["tokenizer"])
    except Exception as e:  # tokenizers raises a bare Exception
        raise BackendError(
            f"the tokenizer is not a Hugging Face tokenizer.json ({e}); "
            "local-cpu builds prompts of exact token counts with it"
        ) from None
    _refuse_unloadable(spec["program"])
    _check_context(spec)
    prompts = {n: exact_prompt(tok, n) for n in spec["prompt_lengths"]}

    import torch  # noqa: F401  (loads libtorch, which the runtime's extensions link against)

    try:  # the extension itself: portable_lib would first import all of executorch.exir (~5 s)
        from executorch.extension.pybindings import _C as pybind
    except ImportError:
        from executorch.extension.pybindings import portable_lib as pybind

    pybind._unsafe_reset_threadpool(threads)  # ExecuTorch's own pool ignores OMP settings
    try:
        import executorch.kernels.quantized  # noqa: F401  INT4 embedding kernels (docs/libraries.md)
    except ImportError:
        pass
    _load_moe_kernels(spec["program"])
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    baseline = rss_now_bytes()
    t0 = time.perf_counter()
    try:
        runner = TextLLMRunner(spec["program"], spec["tokenizer"])
    except RuntimeError as e:
        raise BackendError(
            f"ExecuTorch could not load the program ({e}); it must be an "
            "LLM-convention .pte with metadata methods (get_max_seq_len, "
            "get_vocab_size, use_kv_cache, ...) and a matching tokenizer"
        ) from None
    construct_s = time.perf_counter() - t0
    load_s, runs = None, []
    for n, prompt in prompts.items():
        for i in range(spec["warmup"] + spec["repeats"]):
            warm = i < spec["warmup"]
            try:
                run = _one_run(runner, GenerationConfig, prompt, spec["decode_tokens"], warm)
            except RuntimeError as e:
                raise BackendError(
                    f"generation failed for a prompt of {n} tokens + "
                    f"{spec['decode_tokens']} new ({e}); does it fit the "
                    "program's context (get_max_context_len)?"
                ) from None
            et = run["runtime_stats"]
            if load_s is None:  # the method loads on the first generate
                load_ms = et.get("model_load_end_ms", 0) - et.get("model_load_start_ms", 0)
                load_s = construct_s + max(load_ms, 0) / 1000
            if et.get("prompt_tokens", n) != n:
                raise BackendError(
                    f"the runtime's tokenizer made {et['prompt_tokens']} tokens of "
                    f"a prompt that has {n} with `tokenizers`: tokenizer mismatch"
                )
            if not warm:
                runs.append(
                    {
                        "prompt_tokens": n,
                        "repeat": i - spec["warmup"],
                        "prefill_tok_per_s": n / run["prefill_s"],
                        **run,
                    }
                )
    prefill, decode_by = {}, {}
    for n in prompts:
        mine = [r for r in runs if r["prompt_tokens"] == n]
        prefill[str(n)] = statistics.median(r["prefill_tok_per_s"] for r in mine)
        rates = [r["decode_tok_per_s"] for r in mine if r["decode_tok_per_s"]]
        if rates:
            decode_by[str(n)] = statistics.median(rates)
    peak = peak_rss_bytes()  # of the measured runs (the op profile below loads a second copy)
    op_profile = None
    if spec.get("op_profile"):  # one decode step's per-operator times
        try:
            ids = tok.encode(prompts[min(prompts)], add_special_tokens=False).ids
            op_profile = decode_op_profile(spec["program"], ids, Path.cwd() / "decode.etdump")
        except Exception as e:  # noqa: BLE001  (a profile without it is still a profile)
            op_profile = {"error": f"{type(e).__name__}: {e}"[:500]}
    all_rates = [r["decode_tok_per_s"] for r in runs if r["decode_tok_per_s"]]
    if not all_rates:
        raise BackendError(
            "every run stopped at an end-of-sequence token before a second token: no decode speed to measure"
        )
    return {
        "load_s": load_s,
        "prefill_tok_per_s": prefill,
        "decode_tok_per_s_by_prompt": decode_by,
        "decode_tok_per_s": statistics.median(all_rates),
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "raw": {
            "runs": runs,
            "pid": os.getpid(),
            "construct_s": construct_s,
            "threads": pybind._threadpool_get_thread_count(),
            "decode_op_profile": op_profile,
            "timing": "perf_counter around ExecuTorch TextLLMRunner token callbacks",
        },
    }


if __name__ == "__main__":
    child_main(bench)
