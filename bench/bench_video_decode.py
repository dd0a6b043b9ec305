"""The project's video loader vs what users run today, up to the tensors the model takes, side by side in one run.

Baselines, each at its best thread setting (the faster of one thread and its automatic setting; both are printed):

- decord ``VideoReader(num_threads=1 | 0).get_batch(indices)`` (1 is what Mobile-VideoGPT sets), then the project's
  resize / crop / normalise (`gemma3.data.media.preprocess_frames`): the decode alone differs;
- torchcodec ``VideoDecoder(num_ffmpeg_threads=1 | 0).get_frames_at(indices)`` (PyTorch's own decoder), same
  resize;
- decord followed by the float resize most loaders run (the frames converted to float at full resolution).

Ours: `gemma3.data.media.read_video` (keyframe-aware PyAV reader, frame-threaded) + `preprocess_frames` (uint8 resize).
Clips the bench writes (h264, 30 fps, textured background panning under a moving object): 720p and 1080p with
keyframes every 2-10 s (B-frames: x264 veryfast), a 20 s keyframe interval, variable frame rate, 10-bit and a
phone's rotation matrix; plus every clip in ``--videos DIR`` (real footage: see bench/README.md). Checked per
clip: the same indices, and the model-input tensors within ``TOLERANCE`` (3 intensity levels over the smallest CLIP
std: the decoders' YUV to RGB conversions may differ by a level or two, and the uint8 resize rounds to whole
levels; on 10-bit clips the mean difference within 2 levels, as the decoders dither their 10-to-8-bit conversions
differently). ``--memory``: each loader's peak memory growth reading the clip, in a fresh process, beside the file's
size.

    python bench/bench_video_decode.py [--frames 8 16] [--repeats 5] [--videos DIR] [--memory]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timing import cpu_line, median_time  # noqa: E402

from gemma3.constants import CLIP_MEAN, CLIP_STD, VIDEO_EXTENSIONS  # noqa: E402
from gemma3.data.media import preprocess_frames, read_video, sample_frame_indices  # noqa: E402

TOLERANCE = 3 / 255 / min(CLIP_STD)
SIZE = 224
CLIPS = [  # (name, width, height, seconds, keyframe interval s, what else)
    ("720p-20s-gop5", 1280, 720, 20, 5, {}),
    ("720p-60s-gop10", 1280, 720, 60, 10, {}),
    ("1080p-30s-gop2", 1920, 1080, 30, 2, {}),
    ("720p-40s-gop20", 1280, 720, 40, 20, {}),
    ("720p-20s-vfr", 1280, 720, 20, 5, {"vfr": True}),
    ("720p-20s-10bit", 1280, 720, 20, 5, {"pix_fmt": "yuv420p10le"}),
    ("720p-20s-rotated", 1280, 720, 20, 5, {"rotated": True}),
]


def write_clip(path: Path, width: int, height: int, seconds: int, gop_s: int, fps: int = 30, seed: int = 0,
               pix_fmt: str = "yuv420p", vfr: bool = False, rotated: bool = False) -> Path:  # fmt: skip
    """h264 clip of a smooth random texture panning behind a moving bright square (not per-pixel noise);
    ``vfr``: frame durations vary from 1/60 to 1/10 s; ``rotated``: a phone's 90-degree display matrix."""
    from media_utils import encode_h264, rotate_mp4

    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 24 + 8, width // 24 + 8), dtype=np.float32))
    texture = F.interpolate(coarse, scale_factor=24, mode="bicubic", align_corners=False)[0]  # smooth blobs
    texture = (texture.clamp(0, 1) * 200 + 20).byte().permute(1, 2, 0).numpy()
    n = seconds * fps

    def frames():
        for t in range(n):
            dx, dy = (3 * t) % 150, t % 100
            frame = np.ascontiguousarray(texture[dy : dy + height, dx : dx + width])
            x = int((width - 120) * t / n)
            frame[height // 2 : height // 2 + 120, x : x + 120] = 240
            yield frame

    target = path.with_name("upright-" + path.name) if rotated else path
    gop = str(gop_s * fps)
    options = {"g": gop, "keyint_min": gop, "sc_threshold": "0", "preset": "veryfast", "crf": "23"}
    duration = (lambda: int(rng.choice([17, 33, 33, 50, 100]))) if vfr else None
    encode_h264(target, frames(), width, height, options, fps=fps, pix_fmt=pix_fmt, duration_ms=duration)
    return rotate_mp4(target, path) if rotated else path


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


def loaders(path: Path, frames: int) -> dict:
    """label -> a function returning (model-input tensor, frame indices): the baselines at each thread setting."""
    import decord

    def decord_at(threads: int, resize):
        def run():
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
            idx = sample_frame_indices(len(vr), frames)
            return resize(vr.get_batch(idx).asnumpy(), SIZE), idx

        return run

    def ours():
        v = read_video(path, frames)
        return preprocess_frames(v.frames, SIZE), v.indices

    runs = {
        "decord threads=1 + same resize": decord_at(1, preprocess_frames),
        "decord threads=auto + same resize": decord_at(0, preprocess_frames),
        "decord threads=1 + float resize": decord_at(1, float_resize),
    }
    try:
        from torchcodec.decoders import VideoDecoder

        def torchcodec_at(threads: int):
            def run():
                decoder = VideoDecoder(str(path), num_ffmpeg_threads=threads)
                idx = sample_frame_indices(decoder.metadata.num_frames, frames)
                batch = decoder.get_frames_at(idx).data.permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
                return preprocess_frames(batch, SIZE), idx

            return run

        runs["torchcodec threads=1 + same resize"] = torchcodec_at(1)
        runs["torchcodec threads=auto + same resize"] = torchcodec_at(0)
    except ImportError:
        pass
    runs[OURS] = ours
    return runs


OURS = "ours (read_video + preprocess_frames)"
PEAK = """
import sys
from pathlib import Path
def peak():
    return next(int(x.split()[1]) for x in Path('/proc/self/status').read_text().splitlines() if x.startswith('VmHWM'))
import av, decord, torch, numpy
from gemma3.data.media import read_video, sample_frame_indices
try:
    from torchcodec.decoders import VideoDecoder
except ImportError:
    VideoDecoder = None
path, frames, who = sys.argv[1], int(sys.argv[2]), sys.argv[3]
before = peak()
if who == 'ours':
    read_video(path, frames)
elif who == 'decord':
    vr = decord.VideoReader(path, num_threads=0)
    vr.get_batch(sample_frame_indices(len(vr), frames)).asnumpy()
elif VideoDecoder is not None:
    d = VideoDecoder(path, num_ffmpeg_threads=0)
    d.get_frames_at(sample_frame_indices(d.metadata.num_frames, frames))
print((peak() - before) / 1024)
"""


def peak_growth_mb(path: Path, frames: int, who: str) -> float:
    """Peak resident memory growth (MB) of reading ``frames`` frames with one loader, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(path), str(frames), who], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return float(out.stdout.split()[-1])


def high_bit_depth(path: Path) -> bool:
    """Whether the clip's pixels have more than 8 bits (``yuv420p10le`` and the like)."""
    import av

    with av.open(str(path)) as c:
        fmt = c.streams.video[0].codec_context.pix_fmt or ""
    return any(tag in fmt for tag in ("10", "12", "16"))


def best(times: dict, prefix: str) -> tuple[str, float] | None:
    """The fastest of a baseline's thread settings: (label, seconds)."""
    found = [(label, t) for label, t in times.items() if label.startswith(prefix) and "same resize" in label]
    return min(found, key=lambda x: x[1]) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--videos", type=Path, default=None, help="also time every video in this folder")
    ap.add_argument("--no_synthetic", action="store_true", help="only the --videos clips")
    ap.add_argument("--only", nargs="*", default=None, help="only the bench's clips with these names")
    ap.add_argument("--memory", action="store_true", help="also each loader's peak memory growth")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"CPU: {cpu_line()}; median of {args.repeats}, {SIZE} px model input, tolerance {TOLERANCE:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        if not args.no_synthetic:
            for i, (name, w, h, seconds, gop, extra) in enumerate(CLIPS):
                if args.only is None or name in args.only:
                    clips.append((name, write_clip(Path(tmp) / f"{name}.mp4", w, h, seconds, gop, seed=i, **extra)))
        if args.videos:
            clips += [(p.name, p) for p in sorted(args.videos.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS]
        ratios: dict[str, list[float]] = {"decord": [], "torchcodec": []}
        for name, path in clips:
            for frames in args.frames:
                runs = loaders(path, frames)
                reference, ref_idx = runs["decord threads=1 + same resize"]()
                times = {}
                print(f"\n{name} ({path.stat().st_size / 2**20:.1f} MB), {frames} frames")
                deep = high_bit_depth(path)
                for label, fn in runs.items():
                    out, idx = fn()
                    # 10-bit sources: each decoder's 10-to-8-bit conversion dithers its own way (single pixels
                    # differ by up to ~35 levels between any two of them), so there the mean must agree
                    diff = float((out - reference).abs().mean() if deep else (out - reference).abs().max())
                    if idx != ref_idx or diff > (TOLERANCE / 1.5 if deep else TOLERANCE):  # not the same frames
                        if label == OURS:
                            raise SystemExit(f"{name}: ours took frames {idx} (decord {ref_idx}), max diff {diff:.4f}")
                        print(f"  {label:42s} not the same frames (indices {'equal' if idx == ref_idx else idx}, "
                              f"max diff {diff:.4f} > {TOLERANCE:.4f}): not timed")  # fmt: skip
                        continue
                    times[label] = median_time(fn, args.repeats)
                ours = times[OURS]
                for label, t in times.items():
                    print(f"  {label:42s} {t:7.3f} s")
                for who in ratios:
                    found = best(times, who)
                    if found:
                        ratios[who].append(found[1] / ours)
                        print(f"  ours vs best {who} ({found[0]}): {found[1] / ours:.2f}x")
                if args.memory:
                    mem = {who: peak_growth_mb(path, frames, who) for who in ("ours", "decord", "torchcodec")}
                    print("  peak memory growth (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))
        for who, found in ratios.items():
            if found:
                goal = "1.6x" if who == "decord" else "1.0x"
                print(f"ours vs best {who}: min {min(found):.2f}x, median {statistics.median(found):.2f}x "
                      f"(goal >= {goal})")  # fmt: skip


if __name__ == "__main__":
    main()
