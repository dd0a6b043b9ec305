"""Frame sampling, the two video readers, frame folders, preprocessing, tag expansion."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
import torch
from media_utils import encode_h264, frame_value, make_frames, rotate_mp4, write_frame_folder, write_video

from gemma3.constants import CLIP_MEAN, CLIP_STD, IMAGE_TAG, VIDEO_TAG
from gemma3.data.media import (
    MediaError,
    MediaExpander,
    list_frame_files,
    preprocess_frames,
    read_video,
    sample_frame_indices,
    upright,
)


def test_uniform_sampling_picks_segment_centres():
    assert sample_frame_indices(16, 4) == [2, 6, 10, 14]
    assert sample_frame_indices(10, 5) == [1, 3, 5, 7, 9]
    assert sample_frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # fewer frames: repeated
    with pytest.raises(MediaError, match="no frames"):
        sample_frame_indices(0, 4)


def test_fps_sampling_takes_one_frame_per_second():
    # 10 s at 8 fps = 80 frames; 1 fps gives frames 0, 8, ..., 72 (+80 clipped); thinned to 4.
    idx = sample_frame_indices(80, 10, "fps", source_fps=8.0, fps=1.0)
    assert idx == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72]
    assert sample_frame_indices(80, 4, "fps", source_fps=8.0, fps=1.0) == [8, 24, 48, 64]
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_frame_indices(10, 2, "random")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", make_frames(24))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_readers_return_the_sampled_frames(clip, backend):
    v = read_video(clip, 6, backend=backend)
    assert v.frames.shape == (6, 32, 32, 3) and v.frames.dtype == np.uint8
    assert v.indices == sample_frame_indices(24, 6)
    got = v.frames.reshape(6, -1).mean(1)
    want = np.array([frame_value(i) for i in v.indices])
    assert np.abs(got - want).max() < 6, (got, want)


def test_both_readers_agree(clip):
    a = read_video(clip, 8, backend="decord").frames.astype(int)
    b = read_video(clip, 8, backend="pyav").frames.astype(int)
    assert np.abs(a - b).max() <= 3


def _moving_texture(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth texture panning under a bright square that moves one step per frame: every frame distinct."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.random((1, 3, h // 8 + 4, w // 8 + 4), dtype=np.float32))
    tex = (torch.nn.functional.interpolate(coarse, scale_factor=8, mode="bilinear")[0] * 200 + 20).byte()
    tex = tex.permute(1, 2, 0).numpy()
    frames = []
    for t in range(n):
        f = np.ascontiguousarray(tex[t % 16 : t % 16 + h, t % 24 : t % 24 + w])
        f[10:20, (t * 3) % (w - 10) : (t * 3) % (w - 10) + 10] = 250
        frames.append(f)
    return np.stack(frames)


def _frame_types(path) -> str:
    """The picture type of every decoded frame, in order (``I``, ``P``, ``B``)."""
    import av

    names = {1: "I", 2: "P", 3: "B"}  # FFmpeg's AVPictureType, which PyAV 18 gives as an int
    with av.open(str(path)) as c:
        return "".join(names.get(int(f.pict_type), "?") for f in c.decode(video=0))


@pytest.mark.parametrize(
    "encoding",
    [
        {"gop": 20, "options": {"preset": "veryfast"}},  # B-frames (non-reference ones skipped unless wanted)
        {"gop": 30, "options": {"bf": "0"}},  # I and P frames only
        {"gop": 1},  # every frame a keyframe
    ],
    ids=["b-frames", "no-b-frames", "all-intra"],
)
def test_keyframe_aware_reader_gives_decords_frames(tmp_path, encoding):
    """The PyAV reader (the loader's default) decodes only what it needs and returns exactly decord's frames."""
    import decord

    clip = write_video(tmp_path / "clip.mp4", _moving_texture(90), fps=30, crf=18, **encoding)
    types = _frame_types(clip)  # the clip is encoded as the case says (the encoder options reach x264)
    assert ("B" in types) == ("bf" not in encoding.get("options", {}) and encoding["gop"] > 1), types
    assert (set(types) == {"I"}) == (encoding["gop"] == 1)
    vr = decord.VideoReader(str(clip), num_threads=1)
    for num_frames, mode in ((8, "uniform"), (16, "uniform"), (5, "fps"), (120, "uniform")):
        v = read_video(clip, num_frames, sample=mode, fps=2.0, backend="pyav")
        assert v.indices == sample_frame_indices(len(vr), num_frames, mode, vr.get_avg_fps(), 2.0)
        want = vr.get_batch(v.indices).asnumpy()
        assert v.frames.shape == want.shape and np.abs(v.frames.astype(int) - want).max() <= 2, (num_frames, mode)
    assert read_video(clip, 8).backend == "pyav"  # the default


def test_uint8_resize_matches_the_float_resize_within_a_level():
    frames = _moving_texture(4, 240, 320)
    x = preprocess_frames(frames, 32)
    f = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255
    f = torch.nn.functional.interpolate(f, size=(32, 43), mode="bilinear", antialias=True)[..., 5:37]
    ref = (f.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert (x - ref).abs().max() <= 1 / 255 / min(CLIP_STD)


def test_corrupt_and_missing_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 10)
    with pytest.raises(MediaError, match="broken.mp4"):
        read_video(bad, 4)
    with pytest.raises(MediaError, match="not found"):
        read_video(tmp_path / "nope.mp4", 4)


def test_frame_folder_sorted_numerically(tmp_path):
    frames = make_frames(12)
    write_frame_folder(tmp_path / "f", frames)
    names = [p.name for p in list_frame_files(tmp_path / "f")]
    assert names[:3] == ["frame_1.jpg", "frame_2.jpg", "frame_3.jpg"] and names[-1] == "frame_12.jpg"
    v = read_video(tmp_path / "f", 4)
    means = v.frames.reshape(4, -1).mean(1)
    assert np.abs(means - [frame_value(i) for i in v.indices]).max() < 3


def test_preprocess_resizes_crops_and_normalises():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[..., 0] = 255
    x = preprocess_frames(frames, 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[:, 0], torch.ones(2, 32, 32))
    torch.testing.assert_close(x[:, 1], -torch.ones(2, 32, 32))


def test_expander_uses_model_counts():
    class Cfg:
        video_token_id, image_token_id, num_video_tokens, num_image_tokens = 7, 6, 5, 3

    e = MediaExpander(Cfg())
    assert e(VIDEO_TAG) == [7] * 5 and e(IMAGE_TAG) == [6] * 3


def test_reading_a_long_file_holds_an_index_not_its_packets(tmp_path):
    """16 frames of a 20-minute file (64 px, 30 fps, ~80 MB of nearly incompressible texture): the reader's peak
    memory grows by a small fraction of the file (an index of timestamps and the decoder's frames in flight), not
    by the file's size, as it did when every compressed packet was held before decoding."""
    import subprocess
    import sys

    import av

    clip = tmp_path / "long.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with av.open(str(clip), "w") as c:
        stream = c.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10", "g": "300"}
        for i in range(30 * 60 * 20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(texture, i, axis=1), format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    size_mb = clip.stat().st_size / 2**20
    probe = (
        "import sys\nfrom pathlib import Path\nfrom gemma3.data.media import read_video\n"
        "def peak():\n    return next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmHWM')) / 1024\n"
        "import av\nbefore = peak()  # after the libraries are loaded\nv = read_video(sys.argv[1], 16)\n"
        "print(len(v.frames), peak() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(clip)], capture_output=True, text=True, timeout=300)
    frames, growth = out.stdout.split()
    assert int(frames) == 16 and size_mb > 60
    assert float(growth) < size_mb / 4, (growth, size_mb)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270, -90, 360])
def test_frames_are_turned_upright_as_numpy_turns_them(rotation):
    frame = np.random.default_rng(rotation % 7).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    turned = upright(frame, rotation)
    np.testing.assert_array_equal(turned, np.rot90(frame, k=round(rotation / 90) % 4))
    assert turned.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_turned_clips_come_out_upright_and_the_stream_shows_them_so(tmp_path, degrees):
    """A phone's display matrix, each way, on a clip that is not square (the reader turns the 4:2:0 planes before
    the colour conversion): the frames as numpy turns the stored ones, and the live stream shows them so. (decord
    fails on this clip turned 90 degrees; the square clip of test_reliability.py and the bench's real phone clip
    compare with it.)"""
    from gemma3.serve.stream import open_source

    rng = np.random.default_rng(degrees)
    stored = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(6)]
    clip = encode_h264(tmp_path / "stored.mp4", stored, 48, 32, {"g": "3"})
    plain = read_video(clip, 6).frames  # [T, 32, 48, 3]
    turned = read_video(rotate_mp4(clip, tmp_path / "turned.mp4", degrees), 6)
    np.testing.assert_array_equal(turned.frames, np.rot90(plain, k=-degrees // 90, axes=(1, 2)))
    streamed = np.stack([frame for _, frame in open_source(str(tmp_path / "turned.mp4"))])
    np.testing.assert_array_equal(streamed[turned.indices], turned.frames)


def test_variable_frame_rate_seeks_decode_each_gop_once(tmp_path):
    """MP4 seeks by decode time: in a variable-frame-rate clip a seek to a keyframe's presentation time lands on
    the keyframe before. The reader passes over that GOP's packets instead of decoding it again, and still returns
    decord's frames."""
    import av
    import decord

    rng = np.random.default_rng(1)
    options = {"g": "30", "keyint_min": "30", "sc_threshold": "0", "preset": "veryfast"}
    clip = encode_h264(tmp_path / "vfr.mp4", _moving_texture(120), 64, 48, options,
                       duration_ms=lambda: int(rng.choice([17, 33, 33, 50, 100])))  # fmt: skip  # 1/60 to 1/10 s
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in c.demux(stream) if p.size]  # decode order
        keyframes = sorted(pts for pts, key in packets if key)
        early = []
        for key in keyframes[1:]:
            c.seek(key, stream=stream, backward=True, any_frame=False)
            early.append(next(p.pts for p in c.demux(stream) if p.size) < key)
        assert any(early), early  # the demuxer lands a keyframe early on this clip
    v = read_video(clip, 16, backend="pyav")
    reference = decord.VideoReader(str(clip), num_threads=1).get_batch(v.indices).asnumpy()
    np.testing.assert_array_equal(v.frames, reference)
    frame_pts = sorted(pts for pts, _ in packets)
    gop_of = lambda pts: bisect.bisect_right(keyframes, pts) - 1  # noqa: E731
    touched = {gop_of(frame_pts[i]) for i in v.indices}
    assert v.decoded <= sum(1 for pts, _ in packets if gop_of(pts) in touched)  # each GOP decoded at most once
