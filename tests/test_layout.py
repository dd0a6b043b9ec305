"""The plan of the house (docs/architecture.md), checked on the source tree: the imports walked as the AST has them
(top-level and inside functions), not a grep."""

from __future__ import annotations

import ast
import subprocess
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gemma3"
# Entry points of a checkout (never installed, never imported by the library): each is a few lines over the package.
ENTRY_POINTS = ["constants.py", "conversation.py", "mm_utils.py", "dataset.py", "gemma3n_batch_inference.py",
                "eval/evaluate.py", "eval/timed.py"]  # fmt: skip
ENTRY_NAMES = {"constants", "conversation", "mm_utils", "dataset", "gemma3n_batch_inference", "eval"}
# The floors, lowest first: a module imports only from its own floor's rooms or from floors below. Rooms on one
# floor do not import each other.
FLOORS: list[set[str]] = [
    {"gemma3.constants", "gemma3.utils"},
    {"gemma3.data"},
    {"gemma3.model"},
    {"gemma3.train", "gemma3.serve", "gemma3.export"},
    {"gemma3.evaluation"},
    {"gemma3.presets"},
    {"gemma3.pipeline", "gemma3.cli"},
]
ROOT_MODULES = {"__init__.py", "constants.py", "cli.py", "pipeline.py", "presets.py"}
CLI_NAMES = {"main", "build_parser"}  # every command has these; they are never imported by name elsewhere
# Registered names, compared only inside their registries.
FAMILY_NAMES = {"custom", "native", "gemma3", "gemma3n", "gemma4", "video_gemma"}
FAMILY_REGISTRY = {"gemma3/model/families.py"}
BENCHMARK_REGISTRY_DIR = "gemma3/evaluation/benchmarks/"


def library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(f): f for f in library_files()}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _resolve(name: str) -> str | None:
    """The project module an imported dotted name refers to (``gemma3.data.media.read_video`` ->
    ``gemma3.data.media``); None outside the project."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def project_imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(import statement, project module it imports, whether it sits at module level) for every import."""
    tree = _tree(path)
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `try: import x` / `if TYPE_CHECKING:` at module level count as module level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gemma3.data import media` imports the submodule; `from gemma3.data.media import read_video`
            # the module itself
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in sorted({_resolve(n) for n in names} - {None, module_name(path)}):
            out.append((node, target, id(node) in top))
    return out


def import_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for name, path in MODULES.items():
        graph[name] |= {t for _, t, _ in project_imports(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def room_of(module: str) -> str:
    for floor in FLOORS:
        for room in floor:
            if module == room or module.startswith(room + "."):
                return room
    return "gemma3"  # the package __init__


def floor_of(room: str) -> int:
    return next((i for i, f in enumerate(FLOORS) if room in f), -1)


# ---------------------------------------------------------------- the checks


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_files():
    assert cycles(import_graph()) == []


def test_rooms_import_only_downwards():
    offenders = []
    for name, path in MODULES.items():
        room = room_of(name)
        for node, target, _ in project_imports(path):
            other = room_of(target)
            if other in (room, "gemma3"):
                continue
            if floor_of(other) >= floor_of(room):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} ({room}) imports {target} ({other})")
    assert offenders == []


def test_every_module_lives_in_a_room():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ROOT_MODULES)
    assert loose == [], f"modules at the package root belong in a room: {loose}"
    rooms = {r.split(".")[1] for floor in FLOORS for r in floor}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= rooms, f"packages that are no room of the plan: {folders - rooms}"


def test_project_imports_inside_functions_name_their_reason():
    """A project import kept inside a function carries a comment on its line or the line above saying why."""
    offenders = []
    for path in library_files():
        lines = path.read_text().splitlines()
        for node, target, at_top in project_imports(path):
            if at_top:
                continue
            here = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            reason = here.partition("#")[2].strip() or (above[1:].strip() if above.startswith("#") else "")
            if len(reason) < 15 or reason.startswith("noqa"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target} without a reason")
    assert offenders == []


def _compared_strings(node: ast.AST) -> list[str]:
    """String constants a comparison or ``match`` tests against, in any form: ``x == "a"``, ``x in ("a", "b")``,
    ``x in {"a"}``, ``case "a":``."""
    found = []
    if isinstance(node, ast.Compare):
        for side in [node.left, *node.comparators]:
            items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            found += [c.value for c in items if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant):
        found.append(node.value.value)
    return [s for s in found if isinstance(s, str)]


def _benchmark_names() -> set[str]:
    """The registered benchmark names: the ``name = "..."`` of every ``@register_benchmark`` class."""
    names = set()
    for path in (REPO / BENCHMARK_REGISTRY_DIR).glob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "register_benchmark"
                                                       for d in node.decorator_list):  # fmt: skip
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "name":
                        names.add(stmt.value.value)
    return names


def test_the_name_rule_sees_every_form():
    forms = ['x == "gemma3"', 'x in ("a", "native")', 'x not in {"video_gemma"}', 'match x:\n case "custom": pass']
    for src in forms:
        assert any(s in FAMILY_NAMES for n in ast.walk(ast.parse(src)) for s in _compared_strings(n)), src


def test_family_and_benchmark_names_are_compared_only_in_their_registries():
    benchmarks = _benchmark_names()
    assert {"action_recognition", "qevd"} <= benchmarks
    offenders = []
    for path in library_files():
        rel = str(path.relative_to(REPO))
        for node in ast.walk(_tree(path)):
            strings = set(_compared_strings(node))
            if strings & FAMILY_NAMES and rel not in FAMILY_REGISTRY:
                offenders.append(f"{rel}:{node.lineno} compares family name(s) {sorted(strings & FAMILY_NAMES)}")
            if strings & benchmarks and not rel.startswith(BENCHMARK_REGISTRY_DIR):
                offenders.append(f"{rel}:{node.lineno} compares benchmark name(s) {sorted(strings & benchmarks)}")
    assert offenders == []


def test_presets_carry_their_choices_instead_of_name_branches():
    """No ``preset_name == "cpu"``-style branch: what differs between presets is a field of the preset."""
    offenders = []
    for path in library_files():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Compare) and _compared_strings(node):
                text = ast.unparse(node)
                if "preset" in text.lower() and "auto" not in _compared_strings(node):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text}")
    assert offenders == []


def test_no_two_top_level_functions_or_classes_share_a_name():
    where = defaultdict(list)
    for f in library_files():
        for node in _tree(f).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in CLI_NAMES:
                where[node.name].append(str(f.relative_to(REPO)))
    assert {k: v for k, v in where.items() if len(v) > 1} == {}


def test_library_never_imports_an_entry_point_and_entry_points_stay_thin():
    offenders = []
    for f in library_files():
        for node in ast.walk(_tree(f)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{f.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] in ENTRY_NAMES]
    assert offenders == []
    for entry in ENTRY_POINTS:
        tree = _tree(REPO / entry)
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert set(defs) <= {"main"}, (entry, defs)
        assert len((REPO / entry).read_text().splitlines()) < 30, entry
        assert all(n.module.startswith("gemma3") for n in tree.body if isinstance(n, ast.ImportFrom)), entry


def test_no_sys_path_edits_in_library_code():
    offenders = []
    for f in library_files():
        for node in ast.walk(_tree(f)):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


def test_the_tree_is_ruff_clean():
    proc = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_old_script_name_is_an_alias_of_the_qevd_launcher():
    """``finetune_qved.sh`` runs ``finetune_qevd.sh`` with the same arguments (run once: the pipeline's ``--help``)."""
    old = subprocess.run(["bash", "scripts/finetune_qved.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert old.returncode == 0 and "--preset" in old.stdout and "--num_frames" in old.stdout
    lines = [ln for ln in (REPO / "scripts" / "finetune_qved.sh").read_text().splitlines() if not ln.startswith("#")]
    assert lines == ['exec bash "$(dirname "$0")/finetune_qevd.sh" "$@"']
