"""Hand a trained output folder to the tools that scale and serve it.

    python -m gemma3.export --model_path OUT --to hf --output DIR [--dtype bfloat16] [--for megatron_bridge]

``--to hf``:

- a native Gemma 3 / 3n / 4 output (LoRA / DoRA adapter or full weights): the adapter merged, saved as the stock
  class (``Gemma3ForConditionalGeneration`` ...) in ``--dtype`` with its processor and chat template, so
  ``AutoModelForImageTextToText.from_pretrained(DIR)`` loads it. ``--for megatron_bridge`` also checks what
  Megatron Bridge's Gemma 3 VL import needs (`megatron_bridge_problems`) and refuses, with the reasons, a folder
  it would not accept or would import with weights silently missing.
- a custom (VideoMamba + CLIP + Gemma) output: the LoRA merged into the language model, which is saved as a standalone
  causal-LM folder (``language_model/``, with the tokenizer) beside the CLIP vision tower (``image_encoder/``), the
  VideoMamba weights and projectors (``non_lora_trainables.safetensors``) and a ``config.json`` whose sources point at
  those subfolders, so `gemma3.model.builder.load_model(DIR)` rebuilds the same model. ``export_manifest.json``
  lists the pieces.

``--to gguf`` (`gemma3.export.gguf`): the merged Gemma 3 text backbone (custom or native output) as
``model-{f16,q8_0,f32}.gguf`` for llama.cpp, refused with the reasons where llama.cpp would run it differently.

``--to onnx`` (`gemma3.export.onnx`): the vision path of a custom output (CLIP tower, VideoMamba, projectors).

Nothing is written to ``--output`` until the export has finished: it is built in a temporary folder beside it and
renamed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from gemma3.data.processing import PROCESSING_FILE
from gemma3.export.gguf import export_problems, write_gguf
from gemma3.export.onnx import export_onnx
from gemma3.model.builder import TRAINABLES_FILE, load_model, save_trainables
from gemma3.model.families import CUSTOM, family_for_checkpoint
from gemma3.model.modeling import component_of
from gemma3.utils.errors import run_main, writing
from gemma3.utils.tokenizer_files import save_tokenizer

logger = logging.getLogger(__name__)

TARGETS = ("hf", "gguf", "onnx")
MANIFEST = "export_manifest.json"

# Megatron Bridge 0.6.0's Gemma 3 VL mapping (src/megatron/bridge/models/gemma_vl/gemma3_vl_bridge.py, commit
# 51885cf1): the HF names it reads from the safetensors on disk ("*" = a layer number, "**" = anything). A name it
# does not find is skipped with a warning and the Megatron weight stays uninitialised.
MEGATRON_GEMMA3_VL_NAMES = (
    "language_model.model.embed_tokens.weight",
    "language_model.model.layers.*.input_layernorm.weight",
    "language_model.model.layers.*.self_attn.q_proj.weight",
    "language_model.model.layers.*.self_attn.k_proj.weight",
    "language_model.model.layers.*.self_attn.v_proj.weight",
    "language_model.model.layers.*.self_attn.o_proj.weight",
    "language_model.model.layers.*.self_attn.q_norm.weight",
    "language_model.model.layers.*.self_attn.k_norm.weight",
    "language_model.model.layers.*.post_attention_layernorm.weight",
    "language_model.model.layers.*.pre_feedforward_layernorm.weight",
    "language_model.model.layers.*.post_feedforward_layernorm.weight",
    "language_model.model.layers.*.mlp.gate_proj.weight",
    "language_model.model.layers.*.mlp.up_proj.weight",
    "language_model.model.layers.*.mlp.down_proj.weight",
    "language_model.model.norm.weight",
    "multi_modal_projector.mm_input_projection_weight",
    "multi_modal_projector.mm_soft_emb_norm.weight",
)
MEGATRON_VISION_PREFIXES = ("vision_tower.vision_model.", "vision_tower.")
MEGATRON_ARCHITECTURE = "Gemma3ForConditionalGeneration"  # the class its Gemma 3 VL bridge is registered for
MEGATRON_CONFIG = {"model_type": "gemma3"}
# Its projector's fixed geometry (Gemma3VLMultimodalProjectorConfig defaults): 896 px, 14 px patches, 256 tokens.
MEGATRON_GEOMETRY = {"image_size": 896, "patch_size": 14, "mm_tokens_per_image": 256}


def _weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return sorted(json.loads(index.read_text())["weight_map"])
    names = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            names += list(st.keys())
    return sorted(names)


def _matches(pattern: str, name: str) -> bool:
    parts, pparts = name.split("."), pattern.split(".")
    return len(parts) == len(pparts) and all(p == "*" and n.isdigit() or fnmatch.fnmatchcase(n, p) and p != "*"
                                             for p, n in zip(pparts, parts))  # fmt: skip


def megatron_bridge_problems(folder: str | Path) -> list[str]:
    """Why Megatron Bridge (0.6) would refuse a Gemma 3 VL folder or import it with weights missing; empty if none."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    problems = []
    if MEGATRON_ARCHITECTURE not in (config.get("architectures") or []):
        problems.append(f"architectures is {config.get('architectures')}, not ['{MEGATRON_ARCHITECTURE}']")
    for key, want in MEGATRON_CONFIG.items():
        if config.get(key) != want:
            problems.append(f"{key} is {config.get(key)!r}, not {want!r}")
    for key in ("text_config", "vision_config", "mm_tokens_per_image"):
        if key not in config:
            problems.append(f"config.json has no {key}")
    for key in ("image_token_index", "boi_token_index", "eoi_token_index"):
        if key not in config and key.replace("_index", "_id") not in config:
            problems.append(f"config.json has no {key}")
    vision = config.get("vision_config", {})
    have = {"image_size": vision.get("image_size"), "patch_size": vision.get("patch_size"),
            "mm_tokens_per_image": config.get("mm_tokens_per_image")}  # fmt: skip
    for key, want in MEGATRON_GEOMETRY.items():
        if have[key] != want:
            problems.append(f"{key} is {have[key]}; Megatron Bridge's Gemma 3 VL projector assumes {want}")
    names = _weight_names(folder)
    layers = {n.split(".")[3] for n in names if n.startswith("language_model.model.layers.")}
    for pattern in MEGATRON_GEMMA3_VL_NAMES:
        if "*" in pattern:
            found = {n.split(".")[3] for n in names if _matches(pattern, n)}
            if not layers or found != layers:
                problems.append(f"no weights named {pattern} for every layer (Megatron Bridge would skip them)")
        elif pattern not in names:
            problems.append(f"no weight named {pattern} (Megatron Bridge would skip it)")
    if not any(n.startswith(MEGATRON_VISION_PREFIXES) for n in names):
        problems.append("no vision_tower.* weights")
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model")):
        problems.append("no tokenizer files")
    return problems


def to_megatron_names(folder: Path) -> int:
    """Rewrite a Gemma 3 VL folder's weight names to the checkpoint layout Megatron Bridge reads
    (``model.language_model.*`` -> ``language_model.model.*``, ``model.vision_tower.*`` -> ``vision_tower.*``,
    ``model.multi_modal_projector.*`` -> ``multi_modal_projector.*``, ``lm_head`` dropped: it is tied). transformers
    loads either layout. Returns the number of renamed tensors."""
    from safetensors.torch import load_file, save_file

    rules = (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
             ("model.multi_modal_projector.", "multi_modal_projector."))  # fmt: skip
    if not any(n == "lm_head.weight" or n.startswith(tuple(old for old, _ in rules)) for n in _weight_names(folder)):
        return 0  # already in the checkpoint layout (what transformers' save_pretrained writes)
    renamed = 0
    index = folder / "model.safetensors.index.json"
    weight_map = {}
    for f in sorted(folder.glob("*.safetensors")):
        state = load_file(str(f))
        out = {}
        for name, tensor in state.items():
            if name == "lm_head.weight":
                continue
            new = next((new + name[len(old) :] for old, new in rules if name.startswith(old)), name)
            renamed += new != name
            out[new] = tensor
            weight_map[new] = f.name
        save_file(out, str(f), metadata={"format": "pt"})
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = weight_map
        index.write_text(json.dumps(data, indent=2))
    return renamed


def export_native_hf(model_path: str | Path, output: Path, dtype: torch.dtype, family, for_megatron: bool) -> dict:
    """Merged native VLM in its stock class and ``dtype``, with processor and chat template."""

    model, processor = family.load(model_path, dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(dtype)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    save_tokenizer(processor, output)
    if (Path(model_path) / PROCESSING_FILE).exists():
        shutil.copy(Path(model_path) / PROCESSING_FILE, output / PROCESSING_FILE)
    info = {"format": "hf", "family": family.name, "class": type(model).__name__, "dtype": str(dtype)}
    if type(model).__name__ == MEGATRON_ARCHITECTURE:
        info["renamed_for_megatron_bridge"] = to_megatron_names(output)
        problems = megatron_bridge_problems(output)
        info["megatron_bridge_problems"] = problems
        if for_megatron and problems:
            raise ValueError(f"{output}: Megatron Bridge would not accept this folder: " + "; ".join(problems))
    elif for_megatron:
        raise ValueError(f"Megatron Bridge's VLM import is for Gemma 3 (Gemma3ForConditionalGeneration); this is "
                         f"{family.name}")  # fmt: skip
    return info


def export_custom_hf(model_path: str | Path, output: Path, dtype: torch.dtype) -> dict:
    """The custom model as a standalone causal LM + encoders + projectors that `load_model` reloads."""

    model, tokenizer = load_model(model_path, dtype=torch.float32, merge_lora=True)
    model = model.to(dtype)
    output.mkdir(parents=True, exist_ok=True)
    model.language_model.save_pretrained(output / "language_model")
    save_tokenizer(tokenizer, output / "language_model")
    save_tokenizer(tokenizer, output)
    sources = {"llm": "language_model", "image_encoder": None, "video_encoder": None}
    keep = {"video_encoder", "projector"}
    if model.image_encoder is not None:
        model.image_encoder.vision_model.save_pretrained(output / "image_encoder")
        sources["image_encoder"] = "image_encoder"
    names = [n for n, _ in model.named_parameters() if component_of(n) in keep]
    save_trainables(model, output, names=names)
    config = model.config
    config.sources = sources
    config.save_pretrained(output)
    if (Path(model_path) / PROCESSING_FILE).exists():
        shutil.copy(Path(model_path) / PROCESSING_FILE, output / PROCESSING_FILE)
    return {"format": "hf", "family": "video_gemma", "dtype": str(dtype), "language_model": "language_model",
            "image_encoder": sources["image_encoder"], "trainables": TRAINABLES_FILE,
            "language_model_class": type(model.language_model).__name__}  # fmt: skip


def export_gguf(model_path: str | Path, output: Path, family, gguf_type: str) -> dict:
    """The merged text backbone as ``output/model-{gguf_type}.gguf`` (checked before any weight is loaded). A
    plain causal-LM folder (the custom model's language model before training) exports as it is."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    plain = AutoConfig.from_pretrained(model_path)
    config = plain if plain.model_type.endswith("_text") else family.load_config_and_processor(model_path)[0]
    problems = export_problems(config.get_text_config())
    if problems:
        raise ValueError(f"{model_path}: llama.cpp would not run this language model as trained: {'; '.join(problems)}")
    if config is plain:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    elif family is CUSTOM:
        model, tokenizer = load_model(model_path, dtype=torch.float32, merge_lora=True)
    else:
        model, processor = family.load(model_path, dtype=torch.float32)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        tokenizer = getattr(processor, "tokenizer", processor)
    output.mkdir(parents=True, exist_ok=True)
    name = f"model-{gguf_type}.gguf"
    info = write_gguf(model, tokenizer, output / name, gguf_type, name=Path(model_path).name)
    return {"format": "gguf", "family": family.name, "file": name, **info}


def export(model_path: str | Path, to: str, output: str | Path, dtype: str = "bfloat16",
           for_megatron: bool = False, gguf_type: str = "f16") -> dict:  # fmt: skip
    """Export ``model_path`` (a training output, or any model the project loads) to ``output``; returns the
    manifest (also written to ``output/export_manifest.json``). The export is built in a temporary folder beside
    ``output`` and renamed when it is complete, so a failed export leaves nothing behind."""

    if to not in TARGETS:
        raise ValueError(f"--to {to}: choose one of {TARGETS}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not empty; choose a new folder")
    family = family_for_checkpoint(model_path)
    if for_megatron and (to != "hf" or family is CUSTOM):
        raise ValueError("Megatron Bridge imports the native Gemma 3 VLM as an HF folder (--to hf on a native output)")
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        with writing(output):  # a full disk names the export; the partial folder is removed below
            info = _export_into(staging, model_path, to, family, torch_dtype, for_megatron, gguf_type)
        info["source"] = str(model_path)
        (staging / MANIFEST).write_text(json.dumps(info, indent=2))
        staging.chmod(0o755)  # mkdtemp makes it private
        if output.exists():
            output.rmdir()  # empty (checked above)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %s -> %s (%s)", model_path, output, info)
    return info


def _export_into(staging: Path, model_path, to: str, family, torch_dtype, for_megatron: bool, gguf_type: str) -> dict:
    if to == "gguf":
        return export_gguf(model_path, staging, family, gguf_type)
    if to == "onnx":
        return export_onnx(model_path, staging, family)
    if family is CUSTOM:
        return export_custom_hf(model_path, staging, torch_dtype)
    return export_native_hf(model_path, staging, torch_dtype, family, for_megatron)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", required=True)
    ap.add_argument("--to", required=True, choices=("hf", "gguf", "onnx"))
    ap.add_argument("--output", required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--for", dest="for_", default=None, choices=("megatron_bridge",))
    ap.add_argument("--gguf_type", default="f16", choices=("f16", "q8_0", "f32"), help="weight type of --to gguf")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        export(args.model_path, args.to, args.output, args.dtype, for_megatron=args.for_ == "megatron_bridge",
               gguf_type=args.gguf_type)  # fmt: skip
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
