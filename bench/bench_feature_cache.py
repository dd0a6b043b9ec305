"""Frozen-encoder feature cache on the pretrain stage: samples/s with and without it, side by side, same seed.

    python bench/bench_feature_cache.py [--epochs 3] [--clips 4] [--size 224] [--video_size middle] [--clip base]

The pretrain stage as the gpu preset runs it (encoders frozen, projectors trained, the language model frozen):
Gemma 3 270M (offline), a CLIP ViT-B/16-sized image encoder and VideoMamba-M (random weights: the cost is the
same), 8 frames at 224 px from synthetic clips. Prints the training time of each run, samples/s, the ratio, the
largest loss difference between the two runs and the cache's hits / misses. Later epochs read every clip from the
cache, so the ratio grows with the epochs (and a cache folder shared by the pretrain and finetune stages serves
both).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

CLIP = {
    "base": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "small": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--num_frames", type=int, default=8)
    ap.add_argument("--video_size", default="middle", choices=("tiny", "small", "middle"))
    ap.add_argument("--clip", default="base", choices=tuple(CLIP))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from gemma3.data.synthetic import SyntheticConfig, make_synthetic_dataset
    from gemma3.model.offline import gemma3_270m_path
    from gemma3.train import train as T

    root = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    classes = ("moving left", "moving right")
    synthetic = SyntheticConfig(clips_per_class=2 * args.clips, num_frames=args.num_frames, size=args.size,
                                classes=classes)  # fmt: skip
    make_synthetic_dataset(root / "data", synthetic)
    train_json = root / "data" / "annotations" / "train.json"
    records = json.loads(train_json.read_text())[: args.clips]
    train_json.write_text(json.dumps(records))
    clip_cfg = root / "clip.json"
    clip_cfg.write_text(json.dumps({**CLIP[args.clip], "patch_size": 16, "image_size": args.size}))
    steps = args.epochs * len(records) // args.batch
    runs = {}
    for setting in ("off", "memory"):
        argv = {"model_family": "custom", "model_id": str(gemma3_270m_path()), "image_encoder": "none",
                "image_encoder_config": str(clip_cfg), "video_size": args.video_size, "num_frames": args.num_frames,
                "keyframe_chunk_size": args.num_frames, "keyframes_per_chunk": args.num_frames // 2,
                "image_output_grid": 2, "video_output_grid": 2,
                "data_path": str(train_json), "video_folder": str(root / "data"), "stage": "pretrain",
                "output_dir": str(root / setting), "per_device_train_batch_size": args.batch, "max_steps": steps,
                "learning_rate": 1e-3, "projector_lr": 1e-3, "logging_steps": 1, "save_strategy": "no",
                "report_to": "none", "use_cpu": True, "seed": 0, "dataloader_num_workers": 0, "max_length": 1024,
                "plot_loss": False, "feature_cache": setting}  # fmt: skip
        runs[setting] = T.main([x for k, v in argv.items() for x in (f"--{k}", str(v))])
    off, on = runs["off"], runs["memory"]
    samples = steps * args.batch
    diff = max(abs(a - b) for a, b in zip(off["losses"], on["losses"]))
    print(f"pretrain stage, {args.epochs} epochs of {len(records)} clips ({samples} samples), batch {args.batch}, "
          f"{args.num_frames} frames at {args.size} px, CLIP-{args.clip}, VideoMamba-{args.video_size}")  # fmt: skip
    print(f"  without cache: {off['train_runtime']:.1f} s, {samples / off['train_runtime']:.2f} samples/s")
    print(f"  with cache:    {on['train_runtime']:.1f} s, {samples / on['train_runtime']:.2f} samples/s")
    print(f"  speed-up {off['train_runtime'] / on['train_runtime']:.2f}x; max loss difference {diff:.2e}; "
          f"cache {on['model'].feature_cache.stats()}")  # fmt: skip


if __name__ == "__main__":
    main()
