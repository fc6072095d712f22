"""The optimizer as the recipe asks: AdamW for everything, or Muon for the blocks' matrices + AdamW for the rest.

    opt = make_optimizer(model, settings.pretrain, settings.model, device, tokens_per_step)
    lrs = scaled_lrs(settings.pretrain, settings.model, tokens_per_step)   # what each group starts from

Parameter groups (each with its own learning rate in TrainSettings):
    matrices   the blocks' 2-D weights (attention q k v o, MLP)   lr (AdamW) or muon_lr (Muon)
    embedding  the token table (and a tied head with it)          embed_lr
    head       an untied LM head                                  head_lr
    scalars    norm gains and other 1-D parameters                scalar_lr, no weight decay
Decaying norm gains pulls activations toward zero for no benefit, so 1-D parameters never decay.
The schedule (ngpt.train.schedule) multiplies every group's lr by the same factor each step.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from ngpt.model import CausalSelfAttention
from ngpt.settings import ModelSettings, TrainSettings
from ngpt.train.muon import Muon, MuonWithAdamW, newton_schulz_dtype

FUSED_DEVICES = ("cuda", "cpu")  # where torch has a fused AdamW kernel (MPS's is not used here)
GROUPS = ("matrices", "embedding", "head", "scalars")


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters by group (a tied head is the embedding, listed once)."""
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUPS}
    seen: set[int] = set()
    # ngpt's GPT, or a transformers model of the same shapes (the speed benchmark's comparison)
    embedding = model.tok_emb.weight if hasattr(model, "tok_emb") else model.get_input_embeddings().weight
    head = model.lm_head.weight
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p is embedding:
            groups["embedding"].append(p)
        elif p is head:
            groups["head"].append(p)
        elif p.dim() >= 2:
            groups["matrices"].append(p)
        else:
            groups["scalars"].append(p)
    return groups


def scaled_lrs(cfg: TrainSettings, model_cfg: ModelSettings, tokens_per_step: int) -> dict[str, float]:
    """Each group's peak learning rate.

    With lr_scaling the settings' values are for a model of width lr_ref_width trained on
    lr_ref_batch_tokens tokens per step, and move with this one by nanochat's rule: every lr ×
    √(batch / ref batch) (Adam-family optimizers at a fixed token budget); the AdamW groups also ×
    √(ref width / width), since their updates are per coordinate and the model's outputs sum C of
    them. Muon's updates are orthogonal matrices, already scaled by their shape. Without it, the values
    are used as given.
    """
    matrix_lr = cfg.muon_lr if cfg.optimizer == "muon" else cfg.lr
    lrs = {"matrices": matrix_lr, "embedding": cfg.embed_lr, "head": cfg.head_lr, "scalars": cfg.scalar_lr}
    if cfg.lr_scaling:
        batch = math.sqrt(tokens_per_step / cfg.lr_ref_batch_tokens)
        width = math.sqrt(cfg.lr_ref_width / model_cfg.n_embd)
        muon = {"matrices"} if cfg.optimizer == "muon" else set()
        lrs = {g: lr * batch * (1.0 if g in muon else width) for g, lr in lrs.items()}
    bad = {g: lr for g, lr in lrs.items() if not (lr > 0 and math.isfinite(lr))}
    if bad:
        raise ValueError(f"the learning-rate rule gives non-positive or non-finite rates {bad}; check the *_lr, "
                         "lr_ref_width and lr_ref_batch_tokens settings")
    return lrs


def make_optimizer(model: nn.Module, cfg: TrainSettings, model_cfg: ModelSettings, device: torch.device,
                   tokens_per_step: int):
    """AdamW (optimizer=adamw) or MuonWithAdamW (optimizer=muon) over the model's groups, at scaled_lrs."""
    groups = parameter_groups(model)
    lrs = scaled_lrs(cfg, model_cfg, tokens_per_step)
    decay = cfg.group_weight_decays()
    adam_groups = [{"params": groups[g], "lr": lrs[g], "weight_decay": decay[g], "name": g, "kind": "adamw"}
                   for g in GROUPS if groups[g] and not (g == "matrices" and cfg.optimizer == "muon")]
    # The fused kernel: one pass over each tensor instead of a dozen. On CUDA the usual choice; on a
    # 2-core CPU it measured 4.7 ms vs 20.9 ms (foreach) per step for the 20M-parameter default model.
    fused = device.type in FUSED_DEVICES and "fused" in inspect.signature(torch.optim.AdamW).parameters
    adamw = torch.optim.AdamW(adam_groups, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=fused or None)
    if cfg.optimizer == "adamw":
        return adamw
    splits = head_blocks(model) if cfg.muon_split_heads else {}
    by_kind: dict[tuple, list[nn.Parameter]] = {}  # one group per shape and head split: each is stacked whole
    for p in groups["matrices"]:
        by_kind.setdefault((tuple(p.shape), splits.get(id(p))), []).append(p)
    muon = Muon([{"params": ps, "name": f"matrices {r}×{c}", "kind": "muon", "head_split": split}
                 for ((r, c), split), ps in sorted(by_kind.items(), key=lambda kv: (kv[0][0], kv[0][1] or ()))],
                lr=lrs["matrices"], momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay, ns_steps=cfg.muon_ns_steps,
                ns_scaling=cfg.muon_ns_scaling, row_norm=cfg.muon_row_norm, beta2=cfg.muon_beta2,
                ns_dtype=newton_schulz_dtype(device))
    for group in muon.param_groups:
        group["name"] = "matrices"  # one lr for all of them; the shapes only batch the work
    return MuonWithAdamW(muon, adamw)


def head_blocks(model: nn.Module) -> dict[int, tuple[str, int]]:
    """muon_split_heads: the attention matrices made of per-head blocks, by id: ("rows", n_head) for q, k and v (each
    head owns head_dim output rows), ("cols", n_head) for o (each head owns head_dim input columns). A model that is
    not ngpt's GPT (the speed benchmark's transformers twin) has none: its matrices are orthogonalised whole."""
    blocks: dict[int, tuple[str, int]] = {}
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            for linear in (module.q, module.k, module.v):
                blocks[id(linear.weight)] = ("rows", module.n_head)
            blocks[id(module.o.weight)] = ("cols", module.n_head)
    return blocks


def set_group_lrs(optimizer, peak: dict[str, float], factor: float) -> None:
    """Every group's lr = its peak × the schedule's factor for this step."""
    for group in optimizer.param_groups:
        group["lr"] = peak[group["name"]] * factor


def set_muon_momentum(optimizer, momentum: float) -> None:
    for group in optimizer.param_groups:
        if group.get("kind") == "muon":
            group["momentum"] = momentum
