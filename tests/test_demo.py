"""The web demo (`python -m gemma3.serve.demo`): the callback's updates in-process, a wrong model folder, and the real
page in a headless Chromium (Debian chromium + chromium-driver, driven by selenium): a clip uploaded, its feedback shown
with times, an unreadable upload reported in the page, a screenshot saved."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gemma3.data.long_videos import LongVideoConfig, make_long_videos

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory, gemma270m_dir):
    from tiny_native import make_native

    return make_native(tmp_path_factory.mktemp("demo_model"), gemma270m_dir, "gemma3")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_clip")
    rec = make_long_videos(root, LongVideoConfig(videos=1, segments=2, min_seconds=2.0, max_seconds=2.0, size=32))[0]
    return root / rec["video"]


def test_the_callback_shows_each_window_as_it_is_answered(native_dir, clip, tmp_path):
    import gemma3.serve.inference as inf
    from gemma3.serve.demo import CoachSession
    from gemma3.serve.stream import StreamConfig

    pred = inf.load_predictor(str(native_dir), num_frames=2, generation=inf.GenerationConfig(max_new_tokens=2))
    session = CoachSession(pred, tmp_path / "work", StreamConfig(window=1.0, stride=1.0))
    views = list(session.analyze(str(clip), 1.0, 1.0, "What is happening?"))
    tables = [v[2] for v in views]
    rows = [t.count("\n") - 1 if t else 0 for t in tables]
    assert rows[1:-1] == [1, 2, 3, 4] and rows[-1] == 4  # one more row per answered window, oldest first
    assert views[-1][0].startswith("Done") and "4 windows" in views[-1][3] and views[-1][4].endswith(".png")
    (records,) = list((tmp_path / "work").glob("*.jsonl"))  # the same JSONL records as the command line
    spans = [f"{r['start']:.1f}-{r['end']:.1f}" for r in map(json.loads, records.read_text().splitlines())]
    assert spans == ["0.0-1.0", "1.0-2.0", "2.0-3.0", "3.0-4.0"] and all(s in tables[-1] for s in spans)
    assert "Upload a video" in next(session.analyze(None, 1.0, 1.0, ""))[0]
    assert "longer than the window" in next(session.analyze(str(clip), 1.0, 2.0, ""))[0]


def test_a_folder_that_is_not_a_model_stops_before_serving(tmp_path, caplog):
    from gemma3.serve.demo import main

    assert main(["--model_path", str(tmp_path), "--port", "1"]) == 1
    assert f"model path {tmp_path}: has no config.json" in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no headless browser here: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer on {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_the_page_in_a_real_browser(native_dir, clip, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    port, log = _free_port(), tmp_path / "demo.log"
    cmd = [sys.executable, "-m", "gemma3.serve.demo", "--model_path", str(native_dir), "--port", str(port),
           "--num_frames", "2", "--max_new_tokens", "3", "--window", "2", "--stride", "1",
           "--workdir", str(tmp_path / "work")]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, log)
        assert f"demo on http://127.0.0.1:{port}" in log.read_text()  # loopback unless --host says otherwise

        def run(video: Path, until: str) -> str:
            driver.get(url)
            wait = WebDriverWait(driver, 120)
            upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))[0]
            upload.send_keys(str(video))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video"))  # the upload arrived
            driver.find_element(By.ID, "run").click()
            wait.until(lambda d: until in d.find_element(By.ID, "status").text)
            return driver.find_element(By.ID, "status").text

        status = run(clip, "Done")
        assert "4 windows" in status  # the last one partial
        table = driver.find_element(By.ID, "feedback").text
        assert all(span in table for span in ("0.0-2.0", "1.0-3.0", "2.0-4.0", "3.0-5.0"))
        assert "latency mean" in driver.find_element(By.ID, "stats").text
        assert driver.find_elements(By.CSS_SELECTOR, "#timeline img")
        shot = Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo.png"))
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        broken = tmp_path / "broken.mp4"
        broken.write_bytes(os.urandom(4000))
        status = run(broken, "Could not read")
        assert "broken.mp4" in status and "cannot open" in status and "/tmp/gradio" not in status
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp_path / "work", ignore_errors=True)


def test_a_clip_is_coached_for_at_most_max_seconds_and_names_are_made_safe(native_dir, clip, tmp_path):
    import gemma3.serve.inference as inf
    from gemma3.serve.demo import CoachSession, exposure_warning, safe_stem
    from gemma3.serve.stream import StreamConfig

    assert exposure_warning("127.0.0.1", 7860, False) is None
    assert "has no authentication" in exposure_warning("0.0.0.0", 7860, False)
    assert "anyone who can reach port 7860" in exposure_warning("0.0.0.0", 7860, True)
    assert safe_stem("../../etc/x; rm -rf ~ $(reboot).mp4") == "x_rm_-rf_reboot"
    assert safe_stem("clip (1).MP4") == "clip_1" and safe_stem("...mp4") == "upload"
    pred = inf.load_predictor(str(native_dir), num_frames=2, generation=inf.GenerationConfig(max_new_tokens=2))
    named = tmp_path / "a;b $(c).mp4"
    shutil.copy(clip, named)
    session = CoachSession(pred, tmp_path / "work", StreamConfig(window=1.0, stride=1.0), max_seconds=2.0)
    last = list(session.analyze(str(named), 1.0, 1.0, "What is happening?"))[-1]
    assert "Stopped at 2.0 s" in last[0] and "--max_video_seconds" in last[0]
    assert [p.name.split("-")[0] for p in (tmp_path / "work").glob("*.jsonl")] == ["a_b_c"]


def _login(driver, url: str, wait) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    user = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=text], input[name=username]"))[0]
    user.send_keys("coach")
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys("s3cret")
    driver.find_element(By.CSS_SELECTOR, "button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))


def test_two_pages_a_login_and_an_oversized_upload(native_dir, clip, tmp_path):
    """Served on all interfaces with a login: a warning at start; two pages at once each get their own clip's
    result (the second waits for the first); an upload over the limit is refused in the page; uploads and records
    stay in the demo's folder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, log, work = _free_port(), tmp_path / "demo.log", tmp_path / "work"
    cmd = [sys.executable, "-m", "gemma3.serve.demo", "--model_path", str(native_dir), "--port", str(port),
           "--host", "0.0.0.0", "--auth", "coach:s3cret", "--max_upload_mb", "0.05", "--num_frames", "2",
           "--max_new_tokens", "3", "--window", "2", "--stride", "1", "--workdir", str(work)]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    drivers = [_browser(), _browser()]
    try:
        _wait_http(url, proc, log)
        assert "it has no authentication" not in log.read_text() and "anyone who can reach port" in log.read_text()
        clips = []
        for driver, name in zip(drivers, ("first", "second")):
            _login(driver, url, WebDriverWait(driver, 120))
            clips.append(tmp_path / f"{name}.mp4")
            shutil.copy(clip, clips[-1])
            driver.find_element(By.CSS_SELECTOR, "#video input[type=file]").send_keys(str(clips[-1]))
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video"))
        for driver in drivers:  # both pressed before either is done
            driver.find_element(By.ID, "run").click()
        for driver, own, other in ((drivers[0], "first", "second"), (drivers[1], "second", "first")):
            WebDriverWait(driver, 180).until(lambda d: "Done" in d.find_element(By.ID, "status").text)
            status = driver.find_element(By.ID, "status").text
            assert f"{own}.mp4" in status and other not in status and "4 windows" in status
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(200_000))
        page = drivers[0]
        page.get(url)  # a fresh page (still logged in)
        WebDriverWait(page, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))
        page.find_element(By.CSS_SELECTOR, "#video input[type=file]").send_keys(str(big))
        video = page.find_element(By.ID, "video")
        WebDriverWait(page, 60).until(lambda d: "Error" in video.text)  # Gradio refuses it in the page
        assert "Uploads up to 0.05 MB" in page.find_element(By.ID, "intro").text  # and the page says why
        assert proc.poll() is None  # still serving
        uploads = [p for p in (work / "uploads").rglob("*") if p.is_file()]
        assert {p.name for p in uploads} >= {"first.mp4", "second.mp4"} and "big.mp4" not in {p.name for p in uploads}
    finally:
        for driver in drivers:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
