"""Small media files made by the tests themselves."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from gemma3.data.media import write_video  # noqa: F401  (re-exported for the tests)


def frame_value(i: int) -> int:
    """Grey level that identifies frame i (distinct after lossy encoding)."""
    return (i * 23 + 10) % 250


def make_frames(n: int, size: int = 32) -> np.ndarray:
    """[n, size, size, 3] uint8 frames, frame i a flat grey of frame_value(i)."""
    return np.stack([np.full((size, size, 3), frame_value(i), np.uint8) for i in range(n)])


def write_frame_folder(folder: str | Path, frames: np.ndarray) -> list[Path]:
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames, 1):
        p = folder / f"frame_{i}.jpg"
        Image.fromarray(f).save(p, quality=95)
        paths.append(p)
    return paths


def encode_h264(
    path: str | Path,
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    options: dict,
    fps: int = 30,
    pix_fmt: str = "yuv420p",
    duration_ms: Callable[[], int] | None = None,
) -> Path:
    """x264 with ``options`` (``g``, ``preset`` ...) from rgb24 frames given one at a time (a long HD clip never
    sits in memory); ``duration_ms``: each frame's duration in ms, for a variable frame rate (time base 1/1000)."""
    import fractions

    import av

    ms = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        if duration_ms is not None:
            stream.codec_context.time_base = ms
        t_ms = 0
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            if duration_ms is not None:
                frame.pts, frame.time_base = t_ms, ms
                t_ms += duration_ms()
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


# the tkhd matrix's a, b, c, d (16.16 fixed point) of a turn clockwise for display
TURNS = {90: (0, 0x10000, -0x10000, 0), 180: (-0x10000, 0, 0, -0x10000), 270: (0, -0x10000, 0x10000, 0)}


def rotate_mp4(src: str | Path, dst: str | Path, degrees: int = 90) -> Path:
    """A copy of an MP4 made as a phone's portrait clip is: the frames stored as they are and the track header's
    matrix turning them ``degrees`` (90, 180, 270) clockwise for display (the tkhd matrix starts 40 bytes after the
    box's type; the encoder wrote identity)."""
    data = bytearray(Path(src).read_bytes())
    matrix = data.find(b"tkhd") + 4 + 40
    a, b, c, d = TURNS[degrees]
    data[matrix : matrix + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 0x40000000)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_awkward_clips(folder: str | Path, size: int = 32) -> dict[str, Path]:
    """The ways real files differ from clean clips, written with PyAV: four that cannot be read (truncated, zero
    bytes, audio only, a PNG named .mp4) and four that must be (2 frames, 10-bit, a portrait phone clip's rotation
    matrix, variable frame rate); plus ``good``, the clean clip the rotated one is made from."""
    import fractions

    import av
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = make_frames(16, size)
    frames[:, :4, :4] = (200, 30, 90)  # a corner mark, so a rotation shows

    def encode(path: Path, n: int = 16, pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None) -> Path:
        with av.open(str(path), "w") as c:
            stream = c.add_stream("libx264", rate=8)
            stream.width = stream.height = size
            stream.pix_fmt = pix_fmt
            if pts_ms is not None:
                stream.codec_context.time_base = fractions.Fraction(1, 1000)
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                if pts_ms is not None:
                    frame.pts, frame.time_base = pts_ms[i], fractions.Fraction(1, 1000)
                for packet in stream.encode(frame):
                    c.mux(packet)
            for packet in stream.encode():
                c.mux(packet)
        return path

    out = {"good": encode(folder / "good.mp4")}
    out["truncated"] = encode(folder / "truncated.mp4")
    out["truncated"].write_bytes(out["truncated"].read_bytes()[:700])
    out["zero_bytes"] = folder / "zero_bytes.mp4"
    out["zero_bytes"].write_bytes(b"")
    out["audio_only"] = folder / "audio_only.mp4"
    with av.open(str(out["audio_only"]), "w") as c:
        stream = c.add_stream("aac", rate=16000)
        stream.layout = "mono"
        audio = av.AudioFrame.from_ndarray(np.sin(np.arange(16000, dtype=np.float32) / 10)[None], format="fltp",
                                           layout="mono")  # fmt: skip
        audio.sample_rate = 16000
        for packet in [*stream.encode(audio), *stream.encode()]:
            c.mux(packet)
    out["still_image"] = folder / "still_image.mp4"
    Image.fromarray(frames[0]).save(out["still_image"], format="PNG")
    out["two_frames"] = encode(folder / "two_frames.mp4", n=2)
    out["ten_bit"] = encode(folder / "ten_bit.mp4", pix_fmt="yuv420p10le")
    out["rotated"] = rotate_mp4(out["good"], folder / "rotated.mp4")
    gaps = [0, *[40, 200, 40, 90, 300] * 3]  # milliseconds between frames
    out["variable_frame_rate"] = encode(folder / "variable_frame_rate.mp4", pts_ms=[int(t) for t in np.cumsum(gaps)])
    return out


def long_frame(i: int, size: int = 32) -> np.ndarray:
    """Frame i of `write_long_video`: a flat grey of `frame_value`, with a bar that moves one column a frame."""
    frame = np.full((size, size, 3), frame_value(i), np.uint8)
    frame[:, i % size] = 255
    return frame


def write_long_video(path: str | Path, seconds: int, fps: int = 1, size: int = 32) -> Path:
    """A long, low-resolution H.264 clip of `long_frame`s, written frame by frame (an hour at 1 fps and 32 px is
    under 0.5 MB and a second to write), its index first (``faststart``, as files served on the web are: a plain
    HTTP server without range requests can stream it)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(seconds * fps):
            for packet in stream.encode(av.VideoFrame.from_ndarray(long_frame(i, size), format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path


@contextlib.contextmanager
def served(folder: str | Path) -> Iterator[str]:
    """An HTTP server on loopback serving ``folder``; yields its base URL (``http://127.0.0.1:PORT``)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
