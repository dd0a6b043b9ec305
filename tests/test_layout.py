"""The code layout rules the design sets, checked on the source tree (AST, not grep of comments)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ["constants.py", "conversation.py", "mm_utils.py", "dataset.py"]
CLI_NAMES = {"main", "build_parser"}  # every command has these; they are never imported by name elsewhere


def library_files() -> list[Path]:
    files = [REPO / f for f in TOP_LEVEL]
    for pkg in ("gemma3", "eval"):
        files += sorted((REPO / pkg).rglob("*.py"))
    return files


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_two_top_level_functions_or_classes_share_a_name():
    where = defaultdict(list)
    for f in library_files():
        for node in _tree(f).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in CLI_NAMES:
                where[node.name].append(str(f.relative_to(REPO)))
    assert {k: v for k, v in where.items() if len(v) > 1} == {}


def test_library_never_imports_the_entry_point_script():
    offenders = [str(f) for f in library_files() if "gemma3n_batch_inference" in _imports(_tree(f))]
    assert offenders == []
    entry = (REPO / "gemma3n_batch_inference.py").read_text()
    assert len(entry.splitlines()) < 20 and "from gemma3.inference import main" in entry


def test_no_sys_path_edits_in_library_code():
    offenders = []
    for f in library_files():
        for node in ast.walk(_tree(f)):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


def test_top_level_modules_do_not_import_training():
    for f in TOP_LEVEL:
        assert not any(m.startswith("gemma3.train") for m in _imports(_tree(REPO / f))), f


def test_family_decisions_live_in_the_registry():
    """No comparison with a family or kind name outside gemma3/families.py."""
    names = {"custom", "native", "gemma3", "gemma3n", "gemma4", "video_gemma"}
    offenders = []
    for f in library_files():
        if f.name == "families.py":
            continue
        for node in ast.walk(_tree(f)):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(isinstance(c, str) and c in names for c in consts):
                    offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_old_script_name_is_an_alias_of_the_qevd_launcher():
    import subprocess

    new = subprocess.run(["bash", "scripts/finetune_qevd.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    old = subprocess.run(["bash", "scripts/finetune_qved.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert new.returncode == old.returncode == 0 and "--preset" in new.stdout and old.stdout == new.stdout
