"""Shared steps of the GGUF layout tests: export a saved model through the command line, and compare llama.cpp's
teacher-forced logits with the project's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma3.export.hf import main


def export_kinds(model, tokenizer, root: Path, kinds: tuple[str, ...]) -> dict[str, Path]:
    """Save ``model`` + ``tokenizer`` under ``root/lm`` and export it with ``--to gguf`` once per GGUF type."""
    model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    out = {}
    for kind in kinds:
        argv = ["--model_path", str(root / "lm"), "--to", "gguf", "--gguf_type", kind, "--output", str(root / kind)]
        assert main(argv) == 0
        out[kind] = root / kind / f"model-{kind}.gguf"
    return out


def assert_llama_cpp_agrees(got: np.ndarray, want: np.ndarray, max_err_of_spread: float) -> None:
    """``got`` (llama.cpp) and ``want`` (the project) logits [B, L, V] of nearly flat tiny models: the largest
    difference below ``max_err_of_spread`` x the logits' spread, the same choice on >= 95% of positions, and on every
    one of at least 20 positions where the project's top two are further apart than twice that difference."""
    err = np.abs(got - want).max()
    top2 = np.sort(want, -1)[..., -2:]
    confident = (top2[..., 1] - top2[..., 0]) > 2 * err
    agree = got.argmax(-1) == want.argmax(-1)
    print(f"llama.cpp vs project: max |logit diff| {err:.4f} (spread {want.std():.4f}); argmax agreement "
          f"{agree.mean():.3f}, {agree[confident].mean():.3f} on {confident.sum()} confident positions")  # fmt: skip
    assert err < max_err_of_spread * want.std(), err
    assert agree.mean() >= 0.95 and confident.sum() >= 20 and agree[confident].all()
