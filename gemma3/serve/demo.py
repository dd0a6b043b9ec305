"""Web demo: upload a video or record one with the webcam, and watch the coach's feedback appear over time.

    python -m gemma3.serve.demo --model_path OUT [--port 7860] [--host 127.0.0.1]

The page streams the clip through `gemma3.serve.stream.run_stream` (the same windows, model call and JSONL records
as the command line), showing each window's predicted action and feedback with its time as it is answered, the latency
figures (per window, then the session summary: mean / p95 latency and time to first token, tokens/s, real-time
factor) and a timeline plot. It binds to 127.0.0.1 unless ``--host`` says otherwise. A model folder that cannot be
loaded ends the command with a clear error before the server starts; an unreadable upload gets a message in the
page naming the file. Each session's records are kept in ``--workdir`` (``<upload>-<id>.jsonl``).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from gemma3.serve.feedback import feedback_events, form_label_key, stream_png
from gemma3.serve.inference import GenerationConfig, load_predictor
from gemma3.serve.stream import DEFAULT_PROMPT, SourceError, StreamConfig, run_stream, summarize
from gemma3.utils.errors import run_main

logger = logging.getLogger(__name__)

TITLE = "Exercise coach"
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


class CoachSession:
    """The demo's callback state: one predictor, a folder for the stream records, one stream at a time."""

    def __init__(self, predictor, workdir: str | Path, defaults: StreamConfig | None = None) -> None:
        self.predictor = predictor
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.defaults = defaults or StreamConfig()
        self.lock = threading.Lock()

    def _timeline(self, records: list[dict], path: Path) -> str:

        spoken = feedback_events(records, "end", 2, form_label_key)  # as the main job's coach speaks
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
        out = self.workdir / f"{Path(video).stem}-{uuid.uuid4().hex[:8]}.jsonl"
        plot = out.with_suffix(".png")
        records: list[dict] = []
        arrived: queue.Queue = queue.Queue()
        result: dict = {}
        stop = threading.Event()

        def work() -> None:
            try:
                result["summary"] = run_stream(self.predictor, video, out, cfg, stop=stop, on_record=arrived.put)
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
        else:
            status = f"Done: `{name}`, {len(records)} windows."
        if "windows" not in summary:  # the stream raised: figures from the records it left
            summary = summarize(records, 0, records[-1]["end"], 0.0, sum(r["latency_s"] for r in records))
        timeline = self._timeline(records, plot) if records else None
        action = f"**{records[-1]['action'] or '-'}**" if records else ""
        yield status, action, feedback_table(records), figures(records, summary), timeline


def build_demo(session: CoachSession):
    """The Gradio page: video input (upload / webcam), window settings, and the live outputs."""
    import gradio as gr

    d = session.defaults
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nUpload an exercise video or record one with the webcam; feedback appears as each "
                    "window of the video is answered.")  # fmt: skip
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
    ap.add_argument("--workdir", default=None, help="where the stream records go (default: a temporary folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    try:
        predictor = load_predictor(args.model_path, num_frames=args.num_frames,
                                   generation=GenerationConfig(max_new_tokens=args.max_new_tokens))  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        logger.error("cannot load the model: %s", err)
        return 1
    workdir = args.workdir or tempfile.mkdtemp(prefix="coach-demo-")
    session = CoachSession(predictor, workdir, StreamConfig(window=args.window, stride=args.stride, prompt=args.prompt))
    demo = build_demo(session)
    logger.info("demo on http://%s:%d (stream records in %s)", args.host, args.port, workdir)
    try:
        demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False)
    except OSError as err:
        logger.error("cannot serve on %s:%d: %s", args.host, args.port, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
