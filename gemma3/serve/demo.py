"""Web demo: upload a video or record one with the webcam, and watch the coach's feedback appear over time.

    python -m gemma3.serve.demo --model_path OUT [--port 7860] [--host 127.0.0.1]

The page streams the clip through `gemma3.serve.stream.run_stream` (the same windows, model call and JSONL records
as the command line), showing each window's predicted action and feedback with its time as it is answered, the latency
figures (per window, then the session summary: mean / p95 latency and time to first token, tokens/s, real-time
factor) and a timeline plot. It binds to 127.0.0.1 unless ``--host`` says otherwise. A model folder that cannot be
loaded ends the command with a clear error before the server starts; an unreadable upload gets a message in the
page naming the file. Each session's records are kept in ``--workdir`` (``<upload>-<id>.jsonl``).

Served to others: one stream runs at a time and a second page waits in Gradio's queue, each page seeing only its
own clip and table. Uploads over ``--max_upload_mb`` (default 200) are refused in the page; a clip is coached for
at most ``--max_video_seconds`` (default 600) of its time, so a file with an endless frame count cannot hold the
server; uploads and records stay in the demo's own folder (``--workdir``), under names made of safe characters.
``--host 0.0.0.0`` warns that the page has no authentication; ``--auth user:pass`` turns on Gradio's login.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from gemma3.serve.feedback import COACH_SETTLE_WINDOWS, feedback_events, form_label_key, stream_png
from gemma3.serve.inference import GenerationConfig, load_predictor
from gemma3.serve.stream import DEFAULT_PROMPT, SourceError, StreamConfig, run_stream, summarize
from gemma3.utils.errors import run_main

logger = logging.getLogger(__name__)

TITLE = "Exercise coach"
MAX_UPLOAD_MB = 200.0
MAX_VIDEO_SECONDS = 600.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PLOT_EVERY_S = 2.0  # redraw the timeline at most this often while a stream runs (and once at its end)
View = tuple[str, str, str, str, str | None]  # status, action, feedback table, figures, timeline PNG


def feedback_table(records: list[dict]) -> str:
    """Markdown table of the answered windows, oldest first: time span, action, feedback, latency."""
    if not records:
        return ""
    rows = ["| time (s) | action | feedback | latency (s) |", "|---|---|---|---|"]
    for r in records:
        cells = [f"{r['start']:.1f}-{r['end']:.1f}", r["action"] or "-", r["feedback"] or "-", f"{r['latency_s']:.2f}"]
        rows.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def figures(records: list[dict], summary: dict | None) -> str:
    """Latency figures: the last window's while running, the session summary at the end."""
    if summary is not None:
        s = summary
        return (f"**{s['windows']} windows** · latency mean {s['latency_mean_s']:.2f} s, "
                f"p95 {s['latency_p95_s']:.2f} s · time to first token mean {s['ttft_mean_s']:.2f} s · "
                f"{s['tokens_per_s']:.1f} tokens/s · real-time factor {s['real_time_factor']:.2f}")  # fmt: skip
    if not records:
        return ""
    last = records[-1]
    return f"window {last['window']}: latency {last['latency_s']:.2f} s, time to first token {last['ttft_s']:.2f} s"


def safe_stem(name: str, limit: int = 60) -> str:
    """A file name's stem reduced to letters, digits, ``.``, ``_`` and ``-`` (no path separators, no shell
    characters, at most ``limit`` long), for the files the demo writes about an upload."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "upload"
    return stem[:limit]


def exposure_warning(host: str, port: int, has_auth: bool) -> str | None:
    """What to tell the person serving the demo beyond this machine (None on loopback)."""
    if host in LOOPBACK:
        return None
    tail = "" if has_auth else " -- it has no authentication (pass --auth USER:PASS)"
    return f"the demo listens on {host}: anyone who can reach port {port} can use it{tail}"


class CoachSession:
    """The demo's callback state: one predictor, a folder for the stream records, one stream at a time (a second
    page waits), at most ``max_seconds`` of each clip."""

    def __init__(self, predictor, workdir: str | Path, defaults: StreamConfig | None = None,
                 max_seconds: float = MAX_VIDEO_SECONDS) -> None:  # fmt: skip
        self.predictor = predictor
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.defaults = defaults or StreamConfig()
        self.max_seconds = max_seconds
        self.lock = threading.Lock()

    def _timeline(self, records: list[dict], path: Path) -> str:

        spoken = feedback_events(records, "end", COACH_SETTLE_WINDOWS, form_label_key)  # as the main job's coach speaks
        return str(stream_png(records, [e.t for e in spoken], path))

    def analyze(self, video: str | None, window: float, stride: float, prompt: str) -> Iterator[View]:
        """Stream one clip; yields (status, action, feedback table, figures, timeline) after every window."""
        if not video:
            yield "Upload a video or record one with the webcam, then press **Coach**.", "", "", "", None
            return
        name = Path(video).name
        if stride > window:
            yield f"The stride ({stride:g} s) is longer than the window ({window:g} s): frames would be skipped.", \
                "", "", "", None  # fmt: skip
            return
        cfg = StreamConfig(window=float(window), stride=float(stride), prompt=prompt or self.defaults.prompt,
                           batch_size=1, folder_fps=self.defaults.folder_fps)  # fmt: skip
        out = self.workdir / f"{safe_stem(name)}-{uuid.uuid4().hex[:8]}.jsonl"
        plot = out.with_suffix(".png")
        records: list[dict] = []
        arrived: queue.Queue = queue.Queue()
        result: dict = {}
        stop = threading.Event()

        def on_record(rec: dict) -> None:
            arrived.put(rec)
            if rec["end"] >= self.max_seconds:  # a clip that would never end holds the server no longer
                result["capped"] = True
                stop.set()

        def work() -> None:
            try:
                result["summary"] = run_stream(self.predictor, video, out, cfg, stop=stop, on_record=on_record)
            except (SourceError, OSError, ValueError, RuntimeError) as err:
                result["summary"] = {"error": str(err)}

        with self.lock:
            worker = threading.Thread(target=work, name="demo-stream", daemon=True)
            worker.start()
            drawn, timeline = 0.0, None
            try:
                yield f"Coaching `{name}` ...", "", "", "", None
                while worker.is_alive() or not arrived.empty():
                    try:
                        records.append(arrived.get(timeout=0.2))
                    except queue.Empty:
                        continue
                    if time.monotonic() - drawn > PLOT_EVERY_S:
                        timeline, drawn = self._timeline(records, plot), time.monotonic()
                    status = f"Coaching `{name}`: {len(records)} windows answered ..."
                    yield status, f"**{records[-1]['action'] or '-'}**", feedback_table(records), \
                        figures(records, None), timeline  # fmt: skip
                worker.join()
            finally:
                stop.set()  # the page went away mid-stream: the stream ends cleanly
        summary = result.get("summary") or {}
        error = (summary.get("error") or "").replace(video, name)  # the upload's temporary path says nothing
        if error and not records:
            logger.warning("demo: could not read %s: %s", video, error)
            yield f"**Could not read `{name}`**: {error}", "", "", "", None
            return
        if error:
            status = f"**`{name}` broke after {records[-1]['end']:.1f} s**: {error}. The windows before it are shown."
        elif result.get("capped"):
            status = (f"**Stopped at {records[-1]['end']:.1f} s of `{name}`**: the demo coaches at most "
                      f"{self.max_seconds:g} s of a clip (--max_video_seconds). {len(records)} windows.")  # fmt: skip
        else:
            status = f"Done: `{name}`, {len(records)} windows."
        if "windows" not in summary:  # the stream raised: figures from the records it left
            summary = summarize(records, 0, records[-1]["end"], 0.0, sum(r["latency_s"] for r in records))
        timeline = self._timeline(records, plot) if records else None
        action = f"**{records[-1]['action'] or '-'}**" if records else ""
        yield status, action, feedback_table(records), figures(records, summary), timeline


def build_demo(session: CoachSession, max_upload_mb: float = MAX_UPLOAD_MB):
    """The Gradio page: video input (upload / webcam), window settings, and the live outputs."""
    import gradio as gr

    d = session.defaults
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nUpload an exercise video or record one with the webcam; feedback appears as each "
                    f"window of the video is answered. Uploads up to {max_upload_mb:g} MB (a larger one shows "
                    f"*Error* and is not kept); at most {session.max_seconds:g} s of a clip is coached.",
                    elem_id="intro")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(sources=["upload", "webcam"], label="Video", elem_id="video")
                window = gr.Slider(0.5, 30.0, value=d.window, step=0.5, label="Window (s)", elem_id="window")
                stride = gr.Slider(0.25, 30.0, value=d.stride, step=0.25, label="Stride (s)", elem_id="stride")
                prompt = gr.Textbox(value=d.prompt, label="Prompt", lines=2, elem_id="prompt")
                run = gr.Button("Coach", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                action = gr.Markdown(elem_id="action")
                stats = gr.Markdown(elem_id="stats")
                timeline = gr.Image(
                    type="filepath", label="Timeline", elem_id="timeline", interactive=False, height=220
                )
                feedback = gr.Markdown(elem_id="feedback")
        run.click(session.analyze, [video, window, stride, prompt], [status, action, feedback, stats, timeline])
    return demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", required=True)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--num_frames", type=int, default=None, help="frames per window (default: the model's)")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--window", type=float, default=2.0, help="seconds (the main job's clips: 8 frames at 4 fps)")
    ap.add_argument("--stride", type=float, default=0.5)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--workdir", default=None, help="where uploads and stream records go (default: a new "
                    "temporary folder)")  # fmt: skip
    ap.add_argument("--max_upload_mb", type=float, default=MAX_UPLOAD_MB, help="larger uploads are refused")
    ap.add_argument("--max_video_seconds", type=float, default=MAX_VIDEO_SECONDS,
                    help="coach at most this much of a clip")  # fmt: skip
    ap.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login (Gradio's auth)")
    args = ap.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        ap.error("--auth takes USER:PASS")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    try:
        predictor = load_predictor(args.model_path, num_frames=args.num_frames,
                                   generation=GenerationConfig(max_new_tokens=args.max_new_tokens))  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        logger.error("cannot load the model: %s", err)
        return 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="coach-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")  # Gradio's copies of uploads stay in the demo's folder
    defaults = StreamConfig(window=args.window, stride=args.stride, prompt=args.prompt)
    session = CoachSession(predictor, workdir, defaults, max_seconds=args.max_video_seconds)
    demo = build_demo(session, args.max_upload_mb)
    warning = exposure_warning(args.host, args.port, args.auth is not None)
    if warning:
        logger.warning("%s", warning)
    logger.info("demo on http://%s:%d (uploads and stream records in %s)", args.host, args.port, workdir)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    try:
        demo.queue(default_concurrency_limit=1).launch(
            server_name=args.host, server_port=args.port, share=False, auth=auth,
            max_file_size=int(args.max_upload_mb * 1024 * 1024),  # bytes
        )  # fmt: skip
    except OSError as err:
        logger.error("cannot serve on %s:%d: %s", args.host, args.port, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
