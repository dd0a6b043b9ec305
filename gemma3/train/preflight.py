"""Will this run fit? Everything known before anything heavy loads.

    python -m gemma3.train.preflight --config stage.yaml --num_gpus 8 --gpu_memory 80
    python -m gemma3.train.preflight --model_id google/gemma-3n-E2B-it --data_path data/qevd/annotations/train.json \
        --video_folder data/qevd --use_lora True --bf16 True --deepspeed scripts/zero2.json --gpu_memory 24

The training arguments (flags or ``--config`` YAML) are the training entry point's own; on top of them
``--num_gpus`` (per node), ``--num_nodes``, ``--gpu_memory`` (GiB; exit status 2 when the estimate exceeds it),
``--samples`` (how many training samples to encode for the sequence lengths) and ``--json`` (write the plan).

The model is built on the ``meta`` device from configs (the family's own builder: no weights), so parameter counts
are exact; the first ``--samples`` training samples go through the family's data plugin and chat template, so the
visual tokens and sequence lengths are those of the real batches.

Memory per GPU, with n = GPUs in all, P = parameters, T = trainable parameters, b = bytes per weight (2 for bf16 /
fp16, 4 for fp32; the language model's frozen weights at 0.5 (4-bit) or 1 (8-bit) under QLoRA), L = the largest
layer's parameters, B = micro-batch, S = the longest sequence seen, S_sup = its supervised tokens, H / I / V / N =
the language model's hidden size, largest MLP width, vocabulary and layers:

- weights: ``P*b`` (P with the LoRA / DoRA parameters); ZeRO-3: ``P*b/n + 2*L*b`` (own shard, plus a layer
  gathered and the next prefetched)
- gradients: ``T*b``; ZeRO-2 and ZeRO-3: ``T*b/n``
- optimizer (AdamW): with DeepSpeed in bf16/fp16, an fp32 master copy and two moments, ``12*T`` (ZeRO-1/2/3:
  ``12*T/n``); without DeepSpeed or in fp32, two moments in the parameters' dtype, ``2*T*b``
- activations: gradient checkpointing: ``B*S*H*b*N`` (each layer's input) ``+ B*S*(8H+4I)*b`` (one layer
  recomputed); without it ``B*S*(8H+4I)*b*N``; plus the fp32 logits at supervised positions, ``B*S_sup*V*4*2``
  (logits and their gradient). Trainable encoders add their own tokens x width x layers the same way.
- overhead: 1 GiB per GPU (CUDA context, allocator fragmentation).

The weights / gradients / optimizer lines are exact for the dtypes above (a test measures them after a real
optimizer step); activations are an estimate that errs high with flash / SDPA attention.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gemma3.constants import IGNORE_INDEX
from gemma3.model.families import family_for_checkpoint
from gemma3.model.reference_configs import parameter_counts
from gemma3.train.arguments import expand_config, parse_args
from gemma3.train.setup import build_datasets, component_flags, setup
from gemma3.utils.errors import run_main

logger = logging.getLogger(__name__)

GiB = 1024**3
OVERHEAD = 1 * GiB


@dataclass
class Plan:
    """What the preflight found: counts, tokens, and the memory estimate (bytes per GPU)."""

    family: str
    parameters: dict[str, int]  # per component, and "total"
    trainable: dict[str, dict[str, int]]  # stage -> component (and "lora") -> count, and "total"
    stage: str
    samples: int
    visual_tokens: dict[str, int]  # min / max per sample
    sequence_length: dict[str, float]  # min / mean / max per sample, and max_length
    supervised_tokens: int  # the most in one sample
    world_size: int
    zero_stage: int
    memory: dict[str, int] = field(default_factory=dict)
    gpu_memory: float | None = None

    @property
    def total_memory(self) -> int:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.gpu_memory is None or self.total_memory <= self.gpu_memory * GiB


def zero_stage_of(deepspeed: str | dict | None) -> int:
    """The ZeRO stage of a DeepSpeed config (file or dict); -1 without DeepSpeed."""
    if deepspeed in (None, "", "None", "none"):
        return -1
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


def check_world_size(train_args, world_size: int) -> None:
    """A DeepSpeed config with fixed batch numbers must agree with the micro-batch, accumulation and world size."""
    ds = train_args.deepspeed
    if ds in (None, "", "None", "none"):
        return
    config = ds if isinstance(ds, dict) else json.loads(Path(ds).read_text())
    micro, accum = train_args.per_device_train_batch_size, train_args.gradient_accumulation_steps
    total = config.get("train_batch_size", "auto")
    if total != "auto" and int(total) != micro * accum * world_size:
        raise ValueError(
            f"{ds}: train_batch_size={total} but per_device_train_batch_size={micro} x gradient_accumulation_steps="
            f"{accum} x {world_size} ranks = {micro * accum * world_size}; set it to 'auto' or to a multiple of "
            f"{micro * world_size} (micro-batch x ranks)"
        )
    per_gpu = config.get("train_micro_batch_size_per_gpu", "auto")
    if per_gpu != "auto" and int(per_gpu) != micro:
        raise ValueError(f"{ds}: train_micro_batch_size_per_gpu={per_gpu} but --per_device_train_batch_size={micro}")


def trainable_counts(model: torch.nn.Module, flags: dict[str, bool], family, model_args) -> dict[str, int]:
    """Trainable parameters per component as `train.apply_trainable` would leave them (LoRA / DoRA counted from
    the adapted layers' shapes: A [r, in] + B [out, r], and DoRA's magnitude [out])."""
    component_fn = family.component_fn()
    lora = bool(model_args.use_lora and flags["language_model"])
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        c = component_fn(name)
        if flags[c] and not (lora and c == "language_model"):
            counts[c] = counts.get(c, 0) + p.numel()
    if lora:
        names = family.lora_targets(model, model_args.lora_target_modules, model_args.lora_include_vision)
        n = 0
        for name in names:
            layer = model.get_submodule(name)
            n += model_args.lora_r * (layer.in_features + layer.out_features)
            n += layer.out_features if model_args.use_dora else 0
        counts["lora"] = n
    counts["total"] = sum(counts.values())
    return counts


def _visual_ids(config) -> set[int]:
    ids = set()
    for key in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def measure_samples(dataset, config, limit: int) -> tuple[list[int], list[int], list[int]]:
    """(sequence lengths, visual tokens, supervised tokens) of the first ``limit`` samples, encoded as in training."""

    visual = _visual_ids(config)
    lengths, vis, sup = [], [], []
    for i in range(min(limit, len(dataset))):
        feats = dataset[i]
        ids = feats["input_ids"]
        lengths.append(len(ids))
        vis.append(int(sum((ids == v).sum().item() for v in visual)))
        sup.append(int((feats["labels"] != IGNORE_INDEX).sum().item()))
    return lengths, vis, sup


def _text_dims(model: torch.nn.Module) -> tuple[int, int, int, int]:
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    inter = cfg.intermediate_size
    inter = max(inter) if isinstance(inter, (list, tuple)) else inter
    return cfg.hidden_size, inter, cfg.vocab_size, cfg.num_hidden_layers


def largest_layer(model: torch.nn.Module) -> int:
    """Parameters of the largest repeated block (a decoder / encoder layer) or, failing that, of any module."""
    best = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1].isdigit():
            best = max(best, sum(p.numel() for p in module.parameters()))
    return best or max(p.numel() for p in model.parameters())


def estimate_memory(
    parameters: int,
    trainable: int,
    largest: int,
    world_size: int,
    zero_stage: int,
    weight_bytes: float,
    micro_batch: int,
    seq_len: int,
    supervised: int,
    dims: tuple[int, int, int, int],
    gradient_checkpointing: bool,
    frozen_lm_bytes: float | None = None,
    frozen_lm_params: int = 0,
    encoder_activations: int = 0,
    overhead: int = OVERHEAD,
) -> dict[str, int]:
    """Bytes per GPU by the formula in the module docstring."""
    n, b = world_size, weight_bytes
    weights = parameters * b
    if frozen_lm_bytes is not None:  # QLoRA: the frozen LM weights are quantised
        weights += frozen_lm_params * (frozen_lm_bytes - b)
    if zero_stage == 3:
        weights = weights / n + 2 * largest * b
    grads = trainable * b / (n if zero_stage >= 2 else 1)
    if zero_stage >= 0 and b < 4:  # DeepSpeed mixed precision: fp32 master + m + v
        optimizer = 12 * trainable / (n if zero_stage >= 1 else 1)
    else:
        optimizer = 2 * trainable * b
    hidden, inter, vocab, layers = dims
    per_layer = micro_batch * seq_len * (8 * hidden + 4 * inter) * b
    if gradient_checkpointing:
        acts = micro_batch * seq_len * hidden * b * layers + per_layer
    else:
        acts = per_layer * layers
    acts += micro_batch * supervised * vocab * 4 * 2 + encoder_activations
    return {
        "weights": int(weights),
        "gradients": int(grads),
        "optimizer": int(optimizer),
        "activations": int(acts),
        "overhead": int(overhead),
    }


def plan(model_args, data_args, train_args, num_gpus: int = 1, num_nodes: int = 1, samples: int = 16,
         gpu_memory: float | None = None) -> Plan:  # fmt: skip
    """Build the model on ``meta``, encode ``samples`` training samples, and estimate the memory per GPU."""
    world = num_gpus * num_nodes
    check_world_size(train_args, world)
    family = family_for_checkpoint(model_args.model_id, model_args.model_family)
    model, processor, _, plugin, template = setup(family, model_args, data_args, train_args, meta=True)
    params = parameter_counts(model, family.component_fn())
    trainable = {
        stage: trainable_counts(model, component_flags(model_args, train_args, stage), family, model_args)
        for stage in ("pretrain", "finetune")
    }
    train_ds, _ = build_datasets(data_args, plugin, processor, template)
    lengths, vis, sup = measure_samples(train_ds, model.config, samples)
    if not lengths:
        raise ValueError(f"{data_args.data_path}: no sample could be encoded")
    zero = zero_stage_of(train_args.deepspeed)
    b = 2 if (train_args.bf16 or train_args.fp16) else 4
    flags = component_flags(model_args, train_args)
    enc_acts = 0
    for c in ("image_encoder", "video_encoder"):
        if flags.get(c) and params.get(c):
            enc_acts += 10 * max(vis) * b * int(math.sqrt(params[c]))  # coarse: tokens x width-ish x depth-ish
    memory = estimate_memory(
        params["total"] + trainable[train_args.stage].get("lora", 0), trainable[train_args.stage]["total"],
        largest_layer(model), world, zero, b,
        train_args.per_device_train_batch_size, max(lengths), max(sup), _text_dims(model),
        bool(train_args.gradient_checkpointing),
        frozen_lm_bytes={4: 0.5, 8: 1.0}.get(model_args.bits), frozen_lm_params=params.get("language_model", 0),
        encoder_activations=enc_acts,
    )  # fmt: skip
    return Plan(
        family=family.name,
        parameters=params,
        trainable=trainable,
        stage=train_args.stage,
        samples=len(lengths),
        visual_tokens={"min": min(vis), "max": max(vis)},
        sequence_length={
            "min": min(lengths),
            "mean": sum(lengths) / len(lengths),
            "max": max(lengths),
            "max_length": data_args.max_length,
        },  # fmt: skip
        supervised_tokens=max(sup),
        world_size=world,
        zero_stage=zero,
        memory=memory,
        gpu_memory=gpu_memory,
    )


def check_fits(model_args, data_args, train_args, gpu_bytes: int, samples: int = 2) -> Plan:
    """Training's own check before anything heavy loads (on CUDA, with the device's memory): the preflight plan for
    this rank's share, and one clear error when it does not fit."""
    world = max(1, int(getattr(train_args, "world_size", 1) or 1))
    result = plan(model_args, data_args, train_args, num_gpus=world, samples=samples, gpu_memory=gpu_bytes / GiB)
    if not result.fits:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in result.memory.items())
        raise MemoryError(
            f"this run needs about {result.total_memory / GiB:.1f} GiB per GPU ({parts}) "
            f"but the GPU has {gpu_bytes / GiB:.1f} GiB; see `video-gemma preflight` (LoRA, a smaller batch, "
            "gradient checkpointing, ZeRO-3 or more GPUs)"
        )
    return result


def render(p: Plan) -> str:
    """The plan as a human-readable report."""
    m = lambda n: f"{n / 1e6:,.1f}M"  # noqa: E731
    g = lambda n: f"{n / GiB:,.2f} GiB"  # noqa: E731
    lines = [f"family: {p.family}", "parameters:"]
    lines += [f"  {k:<16} {m(v)}" for k, v in p.parameters.items()]
    for stage, counts in p.trainable.items():
        mark = "  <- this run" if stage == p.stage else ""
        parts = ", ".join(f"{k} {m(v)}" for k, v in counts.items() if k != "total")
        lines.append(f"trainable ({stage}): {m(counts['total'])} ({parts or 'nothing'}){mark}")
    sl = p.sequence_length
    zero = f"ZeRO-{p.zero_stage}" if p.zero_stage >= 0 else "no DeepSpeed"
    lines += [
        f"visual tokens per sample: {p.visual_tokens['min']}-{p.visual_tokens['max']} (first {p.samples} samples)",
        f"sequence length: min {sl['min']}, mean {sl['mean']:.0f}, max {sl['max']} (max_length {sl['max_length']}); "
        f"supervised tokens up to {p.supervised_tokens}",
        f"memory per GPU ({p.world_size} GPU(s), {zero}):",
    ]
    lines += [f"  {k:<12} {g(v)}" for k, v in p.memory.items()]
    lines.append(f"  {'total':<12} {g(p.total_memory)}" + (f" of {p.gpu_memory:g} GiB" if p.gpu_memory else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: the training arguments plus the preflight's own; returns the exit status."""

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--num_gpus", type=int, default=max(1, torch.cuda.device_count()))
    ap.add_argument("--num_nodes", type=int, default=1)
    ap.add_argument("--gpu_memory", type=float, default=None, help="GiB per GPU; exit 2 when the run needs more")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--json", default=None)
    own, rest = ap.parse_known_args(expand_config(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if own.num_gpus < 1 or own.num_nodes < 1:
        raise SystemExit("--num_gpus and --num_nodes must be >= 1")
    result = plan(*parse_args(rest), num_gpus=own.num_gpus, num_nodes=own.num_nodes, samples=own.samples,
                  gpu_memory=own.gpu_memory)  # fmt: skip
    print(render(result))  # noqa: T201  (the command's report)
    if own.json:
        Path(own.json).write_text(json.dumps({**asdict(result), "total_memory": result.total_memory}, indent=2))
    if not result.fits:
        print(  # noqa: T201
            f"DOES NOT FIT: about {result.total_memory / GiB:.1f} GiB per GPU needed, --gpu_memory is "
            f"{result.gpu_memory:g} GiB. Try LoRA, a smaller --per_device_train_batch_size (with more accumulation), "
            "--gradient_checkpointing True, bf16, ZeRO-3 (scripts/zero3.json) or more GPUs.",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
