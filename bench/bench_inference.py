"""Generated tokens/s at batch 1 vs batch 8: same prompts, same model (custom model, Gemma 3 270M backbone, small
encoders), measured side by side in one run on CPU, with the output head and decoder weights inference uses by
default there (``--head auto``: the rescored int4 head, int8 beyond 2 rows; ``--weights auto``: fp16 copies of the
decoder's linears, run by the decoder layer kernel).
Batch-1 decoding against llama.cpp: ``bench/bench_decode.py``.

    python bench/bench_inference.py [--prompts 16] [--new_tokens 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--head", default="auto", choices=["auto", "exact", "int8", "int4"])
    ap.add_argument("--decoder", default="auto", choices=["auto", "generate", "static"])
    ap.add_argument("--weights", default="auto", choices=["auto", "fp32", "fp16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import gemma3.serve.inference as inf
    from gemma3.data.formats import load_annotations
    from gemma3.data.synthetic import SyntheticConfig, make_synthetic_dataset
    from gemma3.model.builder import build_model
    from gemma3.model.families import CUSTOM
    from gemma3.model.offline import gemma3_270m_path
    from gemma3.model.visual_tokens import VisualTokens
    from gemma3.presets import CPU_CLIP, CPU_VIDEOMAMBA
    from gemma3.serve.decoding import choose_decoder

    model, tok = build_model(
        llm=gemma3_270m_path(),
        image_encoder=None,
        image_encoder_config=CPU_CLIP,
        video_encoder_config=CPU_VIDEOMAMBA,
        visual=VisualTokens(
            num_frames=8,
            keyframe_chunk_size=8,
            keyframes_per_chunk=4,
            image_output_grid=2,
            video_output_grid=2,
            video_size="tiny",
        ),
    )
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_dataset(tmp, SyntheticConfig(clips_per_class=4, num_frames=8, variants=0))
        samples = load_annotations(Path(tmp) / "annotations" / "train.json", media_root=tmp)[: args.prompts]
        pred = inf.Predictor(
            model,
            tok,
            CUSTOM.plugin(model, tok, CUSTOM.default_processing(model, tok)),
            CUSTOM.template(model.config),
            inf.GenerationConfig(max_new_tokens=args.new_tokens),
            CUSTOM.stop_token_ids(model.config, tok),
            decoder=choose_decoder(model, args.decoder, args.head, args.weights),
        )
        if len(samples) < args.prompts:
            raise SystemExit(f"only {len(samples)} prompts available, {args.prompts} asked")
        feats = [pred.encode(inf.split_reference(s)[0]) for s in samples]
    # Force full-length generations so both settings produce the same number of tokens.
    model.generation_config.min_new_tokens = args.new_tokens
    results = {}
    for bs in (1, args.batch):
        pred.generate(feats[:bs])  # warm-up
        t0 = time.perf_counter()
        tokens = 0
        for i in range(0, len(feats), bs):
            _, counts = pred.generate(feats[i : i + bs])
            tokens += len(counts) * args.new_tokens
        dt = time.perf_counter() - t0
        results[bs] = tokens / dt
        print(f"batch {bs:2d}: {tokens} tokens in {dt:6.2f} s -> {results[bs]:7.1f} tokens/s")
    ratio = results[args.batch] / results[1]
    print(f"ratio batch {args.batch} / batch 1: {ratio:.2f}x (goal >= 3x): {'met' if ratio >= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
