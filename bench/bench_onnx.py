"""onnxruntime vs PyTorch on CPU for the vision graphs ``python -m gemma3.export --to onnx`` writes.

Real-size modules with random weights: CLIP ViT-B/16 from its shipped published config (224 px), VideoMamba of the
chosen size on the key frames, and both ETP projectors to the width of Gemma-3n-E2B. Each is exported with the
project's exporter (`gemma3.export.onnx.export_graph`) and run side by side in one process, same inputs, same thread
count: median of ``--repeats`` after one warm-up, and the largest difference between the two outputs.

    python bench/bench_onnx.py [--video_size middle] [--keyframes 8] [--frames 8] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import median_time  # noqa: E402


def modules(video_size: str, keyframes: int, frames: int):
    """name -> (module, example input) at real size."""
    from gemma3.export.onnx import _ClipTokens, _VideoTokens
    from gemma3.model.configuration import VideoMambaConfig
    from gemma3.model.encoders import CLIPImageEncoder
    from gemma3.model.projector import ETPProjector
    from gemma3.model.reference_configs import reference_config

    clip_cfg = reference_config("openai/clip-vit-base-patch16").vision_config
    hidden = reference_config("google/gemma-3n-E2B-it").get_text_config().hidden_size
    vm_cfg = VideoMambaConfig.from_size(video_size, num_frames=keyframes, image_size=224, use_cuda_kernels=False)
    holder = torch.nn.Module()
    holder.image_encoder = CLIPImageEncoder(clip_cfg, -2)
    from gemma3.model.videomamba import VideoMambaModel

    holder.video_encoder = VideoMambaModel(vm_cfg)
    grid = clip_cfg.image_size // clip_cfg.patch_size
    image_projector = ETPProjector(clip_cfg.hidden_size, hidden, grid, 7)
    video_projector = ETPProjector(vm_cfg.embed_dim, hidden, vm_cfg.out_grid, vm_cfg.out_grid)
    pixels = torch.randn(frames, 3, 224, 224)
    return {
        "clip_encoder (ViT-B/16)": (_ClipTokens(holder), pixels),
        "image_projector": (image_projector, torch.randn(frames, grid * grid, clip_cfg.hidden_size)),
        f"video_encoder (VideoMamba-{video_size})": (_VideoTokens(holder), torch.randn(1, keyframes, 3, 224, 224)),
        "video_projector": (video_projector, torch.randn(keyframes, vm_cfg.out_grid**2, vm_cfg.embed_dim)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video_size", default="middle", choices=("tiny", "small", "middle"))
    ap.add_argument("--keyframes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8, help="CLIP batch (frames)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnxruntime as ort

    from gemma3.export.onnx import export_graph

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, (module, x) in modules(args.video_size, args.keyframes, args.frames).items():
            module.eval()
            path = Path(tmp) / "graph.onnx"
            start = time.perf_counter()
            export_graph(module, (x,), path, "input", "output")
            export_s = time.perf_counter() - start
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            want = module(x).numpy()
            got = session.run(None, feed)[0]
            t_torch = median_time(lambda m=module, x=x: m(x), args.repeats)
            t_ort = median_time(lambda s=session, f=feed: s.run(None, f), args.repeats)
            rows.append((name, tuple(x.shape), t_torch, t_ort, float(np.abs(got - want).max()), export_s))
    versions = f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    print(f"\nthreads {args.threads}, median of {args.repeats} ({versions})")
    print(f"{'graph':34s} {'input':>24s} {'torch s':>9s} {'ORT s':>9s} {'ORT speed-up':>12s} {'max |diff|':>11s}")
    for name, shape, t_torch, t_ort, diff, _ in rows:
        print(f"{name:34s} {str(shape):>24s} {t_torch:9.4f} {t_ort:9.4f} {t_torch / t_ort:11.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
