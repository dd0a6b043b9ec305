"""The project's video loader vs what users run today, up to the tensors the model takes, side by side in one run.

Baselines, on the same frame indices (uniform sampling, as the loader picks them):

- decord ``VideoReader(num_threads=N).get_batch(indices)`` (``--decord_threads``, 1 as Mobile-VideoGPT sets it),
  then the project's resize / crop / normalise (`gemma3.data.media.preprocess_frames`): the decode alone differs;
- the same decord call followed by the float resize the project used before (and most loaders use): the frames
  converted to float at full resolution, then resized;
- torchcodec's ``VideoDecoder.get_frames_at`` when torchcodec is installed.

Ours: `gemma3.data.media.read_video` (keyframe-aware PyAV reader, frame-threaded) + `preprocess_frames` (uint8 resize).
Clips the bench writes (h264, yuv420p, 30 fps, textured background panning under a moving object; keyframes every
2-10 s; 20-60 s long) at 720p and 1080p, and any real clips in ``--videos DIR``. Checked per clip: the same indices,
and the model-input tensors within ``TOLERANCE`` (3 intensity levels over the smallest CLIP std: the decoders' YUV
to RGB conversions may differ by a level or two, and the uint8 resize rounds to whole levels).

    python bench/bench_video_decode.py [--frames 8 16] [--repeats 5] [--videos DIR] [--decord_threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timing import median_time  # noqa: E402

from gemma3.constants import CLIP_MEAN, CLIP_STD, VIDEO_EXTENSIONS  # noqa: E402
from gemma3.data.media import preprocess_frames, read_video, sample_frame_indices  # noqa: E402

TOLERANCE = 3 / 255 / min(CLIP_STD)
SIZE = 224
CLIPS = [  # (name, width, height, seconds, keyframe interval s)
    ("720p-20s-gop5", 1280, 720, 20, 5),
    ("720p-60s-gop10", 1280, 720, 60, 10),
    ("1080p-30s-gop2", 1920, 1080, 30, 2),
]


def write_clip(path: Path, width: int, height: int, seconds: int, gop_s: int, fps: int = 30, seed: int = 0) -> Path:
    """h264 clip of a smooth random texture panning behind a moving bright square (not per-pixel noise)."""
    import av

    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 24 + 8, width // 24 + 8), dtype=np.float32))
    texture = F.interpolate(coarse, scale_factor=24, mode="bicubic", align_corners=False)[0]  # smooth blobs
    texture = (texture.clamp(0, 1) * 200 + 20).byte().permute(1, 2, 0).numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = str(gop_s * fps)
        stream.options = {"g": gop, "keyint_min": gop, "sc_threshold": "0", "preset": "veryfast", "crf": "23"}
        n = seconds * fps
        for t in range(n):
            dx, dy = (3 * t) % 150, t % 100
            frame = np.ascontiguousarray(texture[dy : dy + height, dx : dx + width])
            x = int((width - 120) * t / n)
            frame[height // 2 : height // 2 + 120, x : x + 120] = 240
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def float_resize(frames: np.ndarray, size: int) -> torch.Tensor:
    """The resize most loaders run (and the project ran before): float at full resolution, then antialiased."""
    x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def loaders(path: Path, frames: int, decord_threads: int) -> dict:
    import decord

    def decord_batch():
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=decord_threads)
        idx = sample_frame_indices(len(vr), frames)
        return vr.get_batch(idx).asnumpy(), idx

    def ours():
        v = read_video(path, frames)
        return preprocess_frames(v.frames, SIZE), v.indices

    def decord_same_resize():
        batch, idx = decord_batch()
        return preprocess_frames(batch, SIZE), idx

    def decord_float_resize():
        batch, idx = decord_batch()
        return float_resize(batch, SIZE), idx

    runs = {
        "decord get_batch + same resize": decord_same_resize,
        "decord get_batch + float resize": decord_float_resize,
    }
    try:
        from torchcodec.decoders import VideoDecoder

        def torchcodec_frames():
            decoder = VideoDecoder(str(path), num_ffmpeg_threads=decord_threads)
            idx = sample_frame_indices(decoder.metadata.num_frames, frames)
            batch = decoder.get_frames_at(idx).data.permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
            return preprocess_frames(batch, SIZE), idx

        runs["torchcodec get_frames_at + same resize"] = torchcodec_frames
    except ImportError:
        pass
    runs["ours (read_video + preprocess_frames)"] = ours
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--videos", type=Path, default=None, help="also time every video in this folder")
    ap.add_argument("--decord_threads", type=int, default=1)
    ap.add_argument("--no_synthetic", action="store_true", help="only the --videos clips")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        if not args.no_synthetic:
            for i, (name, w, h, seconds, gop) in enumerate(CLIPS):
                clips.append((name, write_clip(Path(tmp) / f"{name}.mp4", w, h, seconds, gop, seed=i)))
        if args.videos:
            clips += [(p.name, p) for p in sorted(args.videos.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS]
        print(f"median of {args.repeats}, {SIZE} px model input, decord num_threads={args.decord_threads}, "
              f"tolerance {TOLERANCE:.4f} (normalised units)")  # fmt: skip
        ratios = []
        for name, path in clips:
            for frames in args.frames:
                runs = loaders(path, frames, args.decord_threads)
                reference, ref_idx = runs["decord get_batch + same resize"]()
                times = {}
                for label, fn in runs.items():
                    out, idx = fn()
                    if idx != ref_idx:
                        raise SystemExit(f"{name}: {label} took frames {idx}, decord {ref_idx}")
                    diff = float((out - reference).abs().max())
                    if diff > TOLERANCE:
                        raise SystemExit(f"{name}: {label} differs from decord by {diff:.4f} > {TOLERANCE:.4f}")
                    times[label] = median_time(fn, args.repeats)
                base = times["decord get_batch + same resize"]
                ours = times["ours (read_video + preprocess_frames)"]
                ratios.append(base / ours)
                print(f"\n{name}, {frames} frames")
                for label, t in times.items():
                    print(f"  {label:42s} {t:7.3f} s   {base / t:5.2f}x vs decord + same resize")
        print(f"\nours vs decord get_batch + same resize: min {min(ratios):.2f}x, median "
              f"{statistics.median(ratios):.2f}x (goal >= 1.6x)")  # fmt: skip


if __name__ == "__main__":
    main()
