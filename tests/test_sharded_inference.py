"""Sharded inference: N processes (torchrun), each with its own resumable shard, one merged file with every id
exactly once; a process killed and the run restarted repeats nothing and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tiny_checkpoints import make_custom_assets, save_custom_model

import gemma3.serve.inference as inf
from gemma3.data.formats import Media, Sample
from gemma3.serve.prediction_files import merge_predictions, read_records_by_line, shard_file, shard_folder

REPO = Path(__file__).resolve().parents[1]


class CountingPredictor:
    """Answers each prompt with its sample's clip name; counts what it generated; clips named ``bad*`` fail."""

    def __init__(self) -> None:
        self.generated: list[str] = []

    def encode(self, sample) -> dict:
        path = sample.media[0].path
        if Path(path).name.startswith("bad"):
            raise OSError(f"{path}: cannot decode")
        return {"id": sample.id}

    def generate(self, feats):
        self.generated += [f["id"] for f in feats]
        return [f"answer {f['id']}" for f in feats], [2] * len(feats)


def _samples(n: int, bad: set[int] = frozenset()) -> list[Sample]:
    msgs = [{"role": "user", "content": "<video>\nWhat happens?"}, {"role": "assistant", "content": "x"}]
    return [Sample(f"s{i}", msgs, (Media("video", f"{'bad' if i in bad else 'clip'}{i}.mp4"),)) for i in range(n)]


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_shards_merge_once_every_id_is_written(tmp_path):
    out = tmp_path / "preds.jsonl"
    samples = _samples(7, bad={5})
    p0 = CountingPredictor()
    first = inf.predict_sharded(p0, samples, out, batch_size=2, progress=False, world=(0, 2))
    assert first["shard_total"] == 4 and first["merged"] is None and not out.exists()
    assert p0.generated == ["s0", "s2", "s4", "s6"]  # every second sample, from the first
    p1 = CountingPredictor()
    second = inf.predict_sharded(p1, samples, out, batch_size=2, progress=False, world=(1, 2))
    assert second["errors"] == 1 and second["merged"]["records"] == 7 and second["merged"]["errors"] == 1
    rows = _read(out)
    assert [r["id"] for r in rows] == [s.id for s in samples]  # each id once, in the samples' order
    assert rows[5]["error"] and rows[6]["prediction"] == "answer s6"

    # restarted with three processes: nothing written again but the failed sample, which is retried (and fails again)
    again = [CountingPredictor() for _ in range(3)]
    for r, p in enumerate(again):
        stats = inf.predict_sharded(p, samples, out, progress=False, world=(r, 3))
    assert [p.generated for p in again] == [[], [], []] and stats["merged"]["records"] == 7
    assert [r["id"] for r in _read(out)] == [s.id for s in samples]

    # the clip repaired: its retry succeeds, and the merge keeps the result over the earlier error
    fixed = _samples(7)
    p = CountingPredictor()
    inf.predict_sharded(p, fixed, out, progress=False, world=(0, 1))
    assert p.generated == ["s5"] and not any("error" in r for r in _read(out))


def test_ranks_of_one_launch_that_finish_together_merge_once(tmp_path, monkeypatch):
    """Both ranks find every id written (they finished together): the first merges, the other is told another
    process did (so one process scores); a later launch (another torchrun run id) merges again."""
    out = tmp_path / "preds.jsonl"
    samples = _samples(4)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")
    for r in range(2):  # both shards written before either merges
        with monkeypatch.context() as m:
            m.setattr(inf, "merge_predictions", lambda *a, **k: None)
            inf.predict_sharded(CountingPredictor(), samples, out, progress=False, world=(r, 2))
    merges = [merge_predictions([s.id for s in samples], out) for _ in range(2)]  # rank 0, then rank 1
    assert merges[0]["records"] == 4 and merges[1] is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")
    assert merge_predictions([s.id for s in samples], out)["records"] == 4
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # not under torchrun: every call merges
    assert merge_predictions([s.id for s in samples], out)["records"] == 4


def test_a_single_process_writes_the_output_directly(tmp_path):
    out = tmp_path / "preds.jsonl"
    stats = inf.predict_sharded(CountingPredictor(), _samples(3), out, progress=False, world=(0, 1))
    assert stats["done"] == 3 and not shard_folder(out).exists() and len(_read(out)) == 3
    with pytest.raises(ValueError, match="appear more than once"):
        inf.predict_sharded(CountingPredictor(), _samples(2) * 2, tmp_path / "d.jsonl", world=(0, 2))


def _torchrun(model: Path, ann: Path, out: Path, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "gemma3n_batch_inference.py", "--model_path", str(model), "--annotations", str(ann), "--media_root",
           str(ann.parent), "--output", str(out), "--batch_size", "1", "--max_new_tokens", "8"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(path: Path) -> int:
    return len([x for x in path.read_text().splitlines() if x.endswith("}")]) if path.exists() else 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes_killed_and_restarted(tmp_path, gemma270m_dir):
    llm, clip, vm, data = make_custom_assets(tmp_path, gemma270m_dir, n=4)
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    recs = json.loads(data.read_text())
    ann = data.with_name("many.json")  # 40 samples over the four clips: enough that the kill lands mid-run
    ann.write_text(json.dumps([{**r, "id": f"{r['id']}_{k}"} for k in range(10) for r in recs]))
    ids = [f"{r['id']}_{k}" for k in range(10) for r in recs]

    single = tmp_path / "single.jsonl"
    inf.main(["--model_path", str(model), "--annotations", str(ann), "--media_root", str(ann.parent), "--output",
              str(single), "--batch_size", "1", "--max_new_tokens", "8"])  # fmt: skip
    want = {r["id"]: r["prediction"] for r in _read(single)}

    out = tmp_path / "sharded.jsonl"
    run = _torchrun(model, ann, out)
    victim_shard = shard_file(out, 1, 2)
    deadline = time.time() + 300
    while _lines(victim_shard) < 1 and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, run.stdout.read()
    workers = [c for c in psutil.Process(run.pid).children(recursive=True) if "gemma3n_batch_inference.py" in
               " ".join(c.cmdline())]  # fmt: skip
    victim = next(w for w in workers if w.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)  # killed mid-run: torchrun stops the other worker too
    log = run.communicate(timeout=300)[0]
    assert run.returncode != 0, log
    written_before = _lines(shard_file(out, 0, 2)) + _lines(victim_shard)
    assert 1 <= written_before < len(ids) and not out.exists()

    rerun = _torchrun(model, ann, out)
    log = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, log
    rows = _read(out)
    assert [r["id"] for r in rows] == ids  # every id exactly once, in order
    assert {r["id"]: r["prediction"] for r in rows} == want  # the same replies as one process
    shard_rows = [r for p in sorted(shard_folder(out).glob("*.jsonl")) for _, r in read_records_by_line(p) if r]
    assert sorted(r["id"] for r in shard_rows) == sorted(ids)  # nothing generated twice across the two runs


@pytest.mark.slow
def test_evaluate_with_a_model_under_torchrun_scores_once(tmp_path, gemma270m_dir):
    """``torchrun ... eval/evaluate.py --model_path M``: both processes predict their share, the one that merges the
    shards scores them, and ``metrics.json`` counts every sample once."""
    llm, clip, vm, data = make_custom_assets(tmp_path, gemma270m_dir, n=4)
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "eval/evaluate.py", "--benchmark", "qevd", "--model_path", str(model), "--annotations", str(data),
           "--media_root", str(data.parent), "--output_dir", str(out), "--batch_size", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "predictions written; another process scores them" in run.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 4 and metrics["input"]["coverage"] == 1.0
    rows = _read(out / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in json.loads(data.read_text()))
