"""LoRA target selection shared by the custom and the native models: full names of the linear layers to adapt."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Never adapted by `all-linear`: the output head, and Gemma-3n's altup / laurel / per-layer-input routing.
ALL_LINEAR_SKIP = ("lm_head", "altup", "laurel", "per_layer")


def lora_target_names(model: torch.nn.Module, targets: str, in_scope: Callable[[str], bool]) -> list[str]:
    """Names of the ``nn.Linear`` modules to adapt, for PEFT's ``target_modules``.

    ``targets`` is a comma-separated list of leaf names (``q_proj,v_proj``) or ``all-linear``; only modules whose
    full name passes ``in_scope`` are considered. A linear wrapped in another module as ``<name>.linear`` (Gemma 4's
    clippable linears) is matched by the wrapper's name and returned as the inner ``nn.Linear``, so PEFT wraps the
    layer it supports and the clipping bounds around it keep working.
    """
    wanted = None if targets == "all-linear" else {t.strip() for t in targets.split(",") if t.strip()}
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not in_scope(name):
            continue
        parts = name.split(".")
        leaf = parts[-2] if parts[-1] == "linear" and len(parts) > 1 else parts[-1]
        if wanted is None and not any(s in name for s in ALL_LINEAR_SKIP):
            names.append(name)
        elif wanted is not None and leaf in wanted:
            names.append(name)
    if not names:
        raise ValueError(f"LoRA targets {targets!r} match no linear layer in scope")
    return names
