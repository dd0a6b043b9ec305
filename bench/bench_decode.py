"""Batch-1 CPU decoding of the real Gemma 3 270M: the project's default CPU path vs fp32 HF generate vs llama.cpp.

Measured side by side in one run (median of repeats), 100-token prompt, 64 new greedy tokens, 2 threads:
- ``fp32, exact head, generate``: ``model.generate`` with the fp32 weights, what users of transformers run;
- ``fp32, exact head, generate static``: the same with ``cache_implementation="static"`` (transformers' own static
  KV cache: the honest baseline for the project's static decoder), and with the int8 head;
- ``fp32, int8 head, generate``: the same generate with the rescored int8 output head (`gemma3.model.fast_head`);
- ``fp32, int8 head, static``: the int8 head and the static-cache decoding loop (`gemma3.model.static_decode`,
  its Python step over the model's own modules);
- ``fp16 layer kernel, int8 head, static``: fp16 copies of the decoder's linears (`gemma3.model.fast_linears`) and
  each layer's step as one call of the decoding kernel (``csrc/decode_cpu.cpp``: fp16 weights, fp32 activations);
- ``project default``: the same with the rescored int4 head (`gemma3.model.fast_head`), what ``Predictor`` uses on
  CPU (``--head auto --decoder auto --weights auto``);
- ``bf16 ...``: bf16 decoder weights as well (``--dtype bfloat16``);
- ``llama.cpp``: llama-cpp-python on the Q4_K_M GGUF the project's 270M is converted from (the same weights), when
  it is installed (``pip install -r requirements-llama.txt``, an optional extra that compiles for ~20 minutes).

Quality: teacher-forced next-token agreement with fp32 over 20 varied prompts x 64 positions (each prompt's fp32
greedy continuation scored by every setting's weights and head), and for the static-decoder settings the share of
those 20 x 64 greedy tokens they generate themselves that equal fp32 generate's (each row up to its first miss).

    python bench/bench_decode.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import cpu_line, interleaved_medians, median_time  # noqa: E402

PROMPTS = [
    "The history of the bicycle begins in the early nineteenth century, when",
    "To perform a proper push-up, start in a high plank position and",
    "def merge_sort(values):\n    if len(values) <= 1:\n        return values\n",
    "Photosynthesis converts light energy into chemical energy. In the first stage,",
    "Q: What is the capital of Australia?\nA:",
    "Dear hiring manager, I am writing to apply for the position of",
    "La tour Eiffel a été construite pour l'Exposition universelle de",
    "The squat works the quadriceps, glutes and hamstrings. Common mistakes include",
    "SELECT name, COUNT(*) FROM orders JOIN customers ON",
    "Once upon a time, in a village at the edge of a great forest,",
    "The derivative of sin(x) is cos(x), and the derivative of cos(x) is",
    "Breaking news: the city council voted on Tuesday to",
    "In a deadlift, the bar should stay close to the shins because",
    "Ingredients: 2 cups flour, 1 cup sugar, 3 eggs. Instructions:",
    "El fútbol es el deporte más popular del mundo porque",
    "A transformer model processes a sequence of tokens by",
    "The coach watched the runner's stride and told her to",
    "import numpy as np\n\nx = np.linspace(0, 1, 100)\ny =",
    "The three laws of thermodynamics state that",
    "Yoga teachers often cue students to engage their core during",
]


def _long_prompt(tok, length: int) -> torch.Tensor:
    text = " ".join(PROMPTS)
    ids = tok(text, return_tensors="pt").input_ids[:, :length]
    if ids.shape[1] < length:
        raise SystemExit(f"prompt text has only {ids.shape[1]} tokens")
    return ids  # [1, length]


def _agreement(model, head, sequences, prompt_lens, reference, linears=None) -> float:
    """Share of the continuation positions whose argmax equals the reference's. A rescored head scores one position
    per call, as batch-1 decoding calls it (the int4 head runs its kernel up to 2 rows, its int8 copy beyond)."""
    from gemma3.model.fast_linears import linears_in_forward

    same = total = 0
    with torch.no_grad(), linears_in_forward(model, linears):
        for seq, n, ref in zip(sequences, prompt_lens, reference):
            out = model(seq, output_hidden_states=head is not None)
            if head is None:
                pred = out.logits[0, n - 1 : -1].argmax(-1)  # [64]
            else:  # the final-normed hidden states through the head (a final softcap keeps the argmax)
                hidden = out.hidden_states[-1][0, n - 1 : -1]  # [64, D]
                pred = torch.stack([head(hidden[t : t + 1])[0].argmax() for t in range(hidden.shape[0])])
            same += int((pred == ref).sum())
            total += ref.numel()
    return same / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt_tokens", type=int, default=100)
    ap.add_argument("--new_tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemma3.model.fast_head import build_head, build_int8_head, output_head
    from gemma3.model.fast_linears import pack_fp16_linears
    from gemma3.model.offline import gemma3_270m_gguf, gemma3_270m_path
    from gemma3.model.static_decode import static_greedy_generate

    path = gemma3_270m_path()
    tok = AutoTokenizer.from_pretrained(path)
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    for model in (fp32, bf16):  # exactly max_new_tokens per call, as llama.cpp's loop below (no EOS stop, and no
        model.generation_config.eos_token_id = None  # min_new_tokens processor: it scans the 262k vocabulary per step)
    int8_fp32, int8_bf16, int4 = build_int8_head(fp32), build_int8_head(bf16), build_head(fp32, "int4")
    fp16 = pack_fp16_linears(fp32)
    settings = {  # name: (model, generation head, decoder, the static decoder's linears)
        "fp32, exact head, generate": (fp32, None, "generate", None),
        "fp32, exact head, generate static": (fp32, None, "generate static", None),
        "fp32, int8 head, generate": (fp32, int8_fp32, "generate", None),
        "fp32, int8 head, generate static": (fp32, int8_fp32, "generate static", None),
        "fp32, int8 head, static": (fp32, int8_fp32, "static", None),
        "fp16 layer kernel, int8 head, static": (fp32, int8_fp32, "static", fp16),
        "project default (fp16 kernel, int4, static)": (fp32, int4, "static", fp16),
        "bf16, int8 head, generate": (bf16, int8_bf16, "generate", None),
        "bf16, int8 head, static": (bf16, int8_bf16, "static", None),
    }
    ids = _long_prompt(tok, args.prompt_tokens)
    n = args.new_tokens

    def decode(model, head, decoder, linears=None, prompt=ids, n=n):
        with torch.no_grad(), output_head(model, head):
            if decoder == "static":
                return static_greedy_generate(model, {"input_ids": prompt}, n, [], tok.pad_token_id, linears=linears)
            cache = {"cache_implementation": "static"} if decoder == "generate static" else {}
            return model.generate(prompt, max_new_tokens=n, do_sample=False, **cache)

    def greedy_match(model, head, decoder, linears) -> float:
        """Share of the 20 x n fp32 greedy tokens this setting generates itself (each row up to its first miss)."""
        same = 0
        for seq, p, ref in zip(sequences, prompt_lens, reference):
            got = decode(model, head, decoder, linears, seq[:, :p])[0, p:]
            miss = (got != ref).nonzero()
            same += int(miss[0, 0]) if len(miss) else ref.numel()
        return same / sum(r.numel() for r in reference)

    # Quality first: each prompt's fp32 greedy continuation, scored teacher-forced by every setting.
    sequences, prompt_lens, reference = [], [], []
    for text in PROMPTS:
        p = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            seq = fp32.generate(p, max_new_tokens=n, do_sample=False)
        sequences.append(seq)
        prompt_lens.append(p.shape[1])
        reference.append(seq[0, p.shape[1] :])
    print(f"CPU: {cpu_line()}; torch {torch.__version__}")
    print(f"prompt {ids.shape[1]} tokens, {n} new tokens, batch 1, {args.threads} threads, median of {args.repeats}; "
          "tokens/s: the whole call (prompt included, as llama.cpp's loop below) and the new tokens alone")  # fmt: skip
    default = "project default (fp16 kernel, int4, static)"
    rates = {}
    for name, (model, head, decoder, linears) in settings.items():
        seconds = median_time(lambda m=model, h=head, d=decoder, li=linears: decode(m, h, d, li), args.repeats)
        prompt = median_time(lambda m=model, h=head, d=decoder, li=linears: decode(m, h, d, li, n=1), args.repeats)
        rates[name] = n / seconds
        agree = _agreement(model, head, sequences, prompt_lens, reference, linears)
        match = f"{greedy_match(model, head, decoder, linears):7.2%}" if decoder == "static" else "    (generate)"
        print(f"{name:<46} {rates[name]:5.1f} tokens/s, new tokens {(n - 1) / (seconds - prompt):5.1f}/s "
              f"(prompt {prompt:.3f} s) | teacher-forced agreement with fp32 {agree:7.2%} ({len(PROMPTS)} prompts "
              f"x {n}) | own greedy tokens = fp32 generate's {match}")  # fmt: skip
    print(
        f"project default / fp32 exact generate: {rates[default] / rates['fp32, exact head, generate']:.2f}x, "
        f"/ fp32 generate static: {rates[default] / rates['fp32, exact head, generate static']:.2f}x"
    )
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: llama-cpp-python not installed (pip install -r requirements-llama.txt); not compared")
        return
    import numpy as np

    llm = Llama(str(gemma3_270m_gguf()), n_threads=args.threads, n_ctx=512, verbose=False)
    prompt_ids = ids[0].tolist()

    def llama_decode(new: int = n):
        llm.reset()
        llm.eval(prompt_ids)
        for _ in range(new - 1):  # the prompt's eval gives the first token's logits, as the project's prefill does
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return int(np.argmax(llm.scores[llm.n_tokens - 1]))

    model, head, decoder, linears = settings[default]
    t = interleaved_medians({  # in turn, so the machine's drift during the run touches both alike
        "ours": lambda: decode(model, head, decoder, linears),
        "ours prompt": lambda: decode(model, head, decoder, linears, n=1),
        "llama": llama_decode,
        "llama prompt": lambda: llama_decode(1),
    }, args.repeats)  # fmt: skip
    for who, label in (("ours", default), ("llama", "llama.cpp (Q4_K_M, same weights)")):
        print(f"{label:<46} {n / t[who]:5.1f} tokens/s, new tokens {(n - 1) / (t[who] - t[who + ' prompt']):5.1f}/s "
              f"(prompt {t[who + ' prompt']:.3f} s), interleaved")  # fmt: skip
    whole = t["llama"] / t["ours"]
    new_only = (t["llama"] - t["llama prompt"]) / (t["ours"] - t["ours prompt"])
    print(f"project default / llama.cpp: {whole:.2f}x tokens/s with the prompt, {new_only:.2f}x the new tokens alone "
          "(goal >= 1.0x)")  # fmt: skip


if __name__ == "__main__":
    main()
