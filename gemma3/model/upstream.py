"""Upstream reference code the project is measured and tested against, loaded from its published source.

mamba-ssm's ``selective_scan_ref`` is what users run on a machine without its CUDA kernels, but its module imports
the compiled ``selective_scan_cuda`` extension at the top, so ``import mamba_ssm`` fails on CPU. This module reads
the function's source out of the package (an installed copy, or the PyPI sdist ``.cache/upstream`` holds, which
``.ci/run`` downloads) and compiles only that function, unchanged, against torch and einops.

    pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm==2.3.1 -d .cache/upstream
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAMBA_SSM_VERSION = "2.3.1"
MAMBA_SSM_SOURCE_ENV = "MAMBA_SSM_SOURCE"
_SCAN_MODULE = "mamba_ssm/ops/selective_scan_interface.py"
DOWNLOAD_HINT = (
    f"MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation "
    f"mamba-ssm=={MAMBA_SSM_VERSION} -d .cache/upstream"
)


def _installed_module() -> Path | None:
    """The installed mamba_ssm's scan module, found without importing the package (that needs CUDA)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "selective_scan_interface.py"
    return path if path.is_file() else None


def mamba_ssm_candidates() -> list[Path]:
    """Where the mamba_ssm source is looked for, in order: $MAMBA_SSM_SOURCE, the sdists in .cache/upstream
    (newest name first), an installed package."""
    found = []
    if os.environ.get(MAMBA_SSM_SOURCE_ENV):
        found.append(Path(os.environ[MAMBA_SSM_SOURCE_ENV]))
    found += sorted((REPO / ".cache" / "upstream").glob("mamba_ssm-*.tar.gz"), reverse=True)
    installed = _installed_module()
    if installed is not None:
        found.append(installed)
    return found


def _read_scan_module(source: Path) -> str:
    """The text of selective_scan_interface.py from an sdist (.tar.gz), a source folder or the file itself."""
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(_SCAN_MODULE)), None)
            if member is None:
                raise FileNotFoundError(f"{source} has no {_SCAN_MODULE}")
            return tar.extractfile(member).read().decode()
    if source.is_dir():
        hits = sorted(source.rglob("selective_scan_interface.py"))
        if not hits:
            raise FileNotFoundError(f"{source} has no {_SCAN_MODULE}")
        source = hits[0]
    return source.read_text()


@functools.lru_cache(maxsize=4)
def _compile_function(text: str, name: str) -> Callable:
    import torch
    import torch.nn.functional as F
    from einops import rearrange, repeat

    tree = ast.parse(text)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise LookupError(f"mamba_ssm source defines no {name}")
    namespace = {"torch": torch, "F": F, "rearrange": rearrange, "repeat": repeat}
    exec(compile(ast.Module(body=[node], type_ignores=[]), f"<mamba_ssm {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def mamba_selective_scan_ref(source: str | Path | None = None) -> Callable:
    """mamba-ssm's ``selective_scan_ref`` (u, delta, A, B, C, D, z, delta_bias, delta_softplus,
    return_last_state), compiled from ``source`` or the first of `mamba_ssm_candidates`. Raises FileNotFoundError
    with the download command when no source is found."""
    candidates = [Path(source)] if source is not None else mamba_ssm_candidates()
    for path in candidates:
        if path.exists():
            return _compile_function(_read_scan_module(path), "selective_scan_ref")
    raise FileNotFoundError(
        "mamba_ssm source not found (looked at: " + (", ".join(map(str, candidates)) or "nothing") + "); "
        f"get it with: {DOWNLOAD_HINT}, or set ${MAMBA_SSM_SOURCE_ENV}"
    )
