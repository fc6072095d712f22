"""Muon: momentum SGD whose update is orthogonalised (Newton-Schulz), for the blocks' 2-D matrices.

    opt = Muon([{"params": same_shape_matrices}], lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=0.2,
               ns_steps=4, ns_scaling="aol", row_norm=True, beta2=0.95)

Per step and matrix W with gradient G (Keller Jordan's Muon, as torch.optim.Muon computes it):
    buf ← lerp(buf, G, 1 − momentum);  U ← lerp(G, buf, momentum)        (Nesterov)
    U ← NS_k(scale(U))   k quintic Newton-Schulz steps ≈ the nearest semi-orthogonal matrix, in bf16 on
        GPUs (Muon's own choice) and on the CPU in what measured faster here (newton_schulz_dtype)
    row_norm (NorMuon, Li et al. 2025): v ← lerp(v, mean_j U_ij², 1 − β₂) per neuron i (one per index
        of the longer side); U ← U / √v, rescaled to U's norm before: orthogonal updates leave some
        neurons' steps far larger than others', and this evens them out as Adam does per coordinate
    W ← W·(1 − lr·wd) − lr·√max(1, rows/cols)·U
scale is U / ‖U‖_F (torch.optim.Muon's, ns_scaling="frobenius") or AOL's per-row bound ("aol", the
default: on Gaussian matrices the same accuracy one iteration sooner; see orthogonalize).
A group with a "head_split" (muon_split_heads: q, k, v by rows, o by columns) orthogonalises each attention
head's block on its own (orthogonalize_heads, GLM-5's Muon Split); NorMuon still sees the whole matrix.
torch.optim.Muon runs the same arithmetic one matrix at a time; this one stacks every matrix of a
param group (one group per shape) and runs the iterations as batched matmuls, with the polynomial's
adds fused into them (baddbmm). Measured on a 2-core AVX512-BF16/AMX CPU for the default 20M model
(48 matrices, 5 steps): torch.optim.Muon 233 ms per optimizer step, this 137 ms. On a 2-core Ice Lake
(no bf16 units; 4 steps, AOL) the iterations took 1.70 s in bf16, 0.46 s in fp32; in fp32 the MLP's 4:1
matrices iterate on their Gram matrix (gram_newton_schulz), which took their 16 from 311 ms to 165 ms. In
bf16 the Gram form restarts every 2 steps; on a 2-core Zen 5 (AVX512-BF16) that, with NorMuon's statistics
read along contiguous memory, took the whole optimizer step from 187-223 ms to 153-159 ms (old and new
code in alternating processes). Stacking the updates straight into the iterations' dtype and taking a tall
matrix's NorMuon statistics on its contiguous form took it from 114.9 to 107.9 ms (median of 20, old and new
alternating in one process, on a 2-core Xeon with AMX, where the matmuls run at 2.0-2.8 TFLOP/s and are
~55 ms of it). Tested against torch.optim.Muon on toy matrices (tests/test_muon.py).
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor

from ngpt.settings import NsScalingChoice

# The quintic's coefficients, chosen to maximise the slope at zero (Jordan et al., torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
EPS = 1e-7
NS_SCALINGS = get_args(NsScalingChoice)  # the names the settings accept, spelled once there


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """What the iterations run in: they tolerate bf16 (Muon's own choice), which is the fast dtype on GPUs;
    on the CPU bf16 is faster only with bf16 units, so there it is whichever measured faster here."""
    if device.type != "cpu":
        return torch.bfloat16
    from ngpt.device import DTYPES
    from ngpt.measured import cpu_matmul_dtype

    return DTYPES[cpu_matmul_dtype().name]


def orthogonalize(updates: Tensor, steps: int, scaling: str = "frobenius", dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Newton-Schulz on a stack (N, rows, cols) of same-shape matrices.

    The iteration needs every singular value ≤ 1 first. scaling="frobenius" divides by ‖X‖_F (Muon's
    original); "aol" scales each row i by (Σ_j |XXᵀ|_ij)^-½ (Prach & Lampert's AOL bound, as Turbo-Muon
    does): also ≤ 1, but far less pessimistic, so the small singular values start nearer 1 and, on
    Gaussian matrices, one iteration fewer reaches the same accuracy (on a trained model's momentum
    buffers it gains less: 4 steps reach about Frobenius's 4; README round 8). Its Gram matrix is the
    first iteration's, so it costs no matmul (aol_scaled). The update is applied in fp32 whatever
    `dtype` the iterations ran in. A matrix whose long side is enough longer than its short one
    iterates on its Gram matrix instead (gram_newton_schulz: the same polynomial, fewer flops; in bf16
    restarted every GRAM_RESTART_EVERY steps).
    """
    a, b, c = NS_COEFFICIENTS
    tall = updates.size(-2) > updates.size(-1)
    x = (updates.mT if tall else updates).to(dtype)  # iterate on the wide side: the Gram matrix is the smaller one
    if scaling == "frobenius":
        x = x / x.flatten(1).norm(dim=1).clamp(min=EPS)[:, None, None]
    gram = torch.bmm(x, x.mT)
    if scaling == "aol":
        x, gram = aol_scaled(x, gram)
    restart = gram_restart_every(dtype)
    if gram_is_cheaper(x.size(-2), x.size(-1), steps, restart):
        x = gram_newton_schulz(x, gram, steps, restart)
    else:
        for step in range(steps):
            if step:
                gram = torch.bmm(x, x.mT)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
            x = torch.baddbmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x.mT if tall else x


def orthogonalize_heads(updates: Tensor, axis: str, heads: int, steps: int, scaling: str = "frobenius",
                        dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """orthogonalize on each head's block of a stack (N, rows, cols) of attention matrices, each block on its own
    (GLM-5's Muon Split; DeepSpeed's and Megatron's per-head Muon): axis="rows" for q, k, v (head h owns rows
    h·d … (h+1)·d), "cols" for o (head h owns those columns). The blocks are d × C, aspect n_head, so they take
    the Gram form: for the default 20M model's 32 square matrices (6 heads of 64) about 1/12 of the whole
    matrices' flops in bf16 (gram_is_cheaper's count: 6 blocks × 68 units of 64³ against 24 units of 384³)."""
    x = updates if axis == "rows" else updates.mT
    n, r, c = x.shape
    if r % heads:
        raise ValueError(f"a {r}-row side does not split into {heads} heads")
    blocks = orthogonalize(x.reshape(n * heads, r // heads, c), steps, scaling, dtype).reshape(n, r, c)
    return blocks if axis == "rows" else blocks.mT


def aol_scaled(x: Tensor, gram: Tensor) -> tuple[Tensor, Tensor]:
    """AOL's start for a wide stack X and its Gram matrix A = X·Xᵀ: D·X with D_ii = (Σ_j |A_ij|)^-½, and
    D·A·D (the Gram matrix of D·X, without a matmul). The row sums are taken in at least fp32."""
    stats = torch.promote_types(x.dtype, torch.float32)
    row = gram.abs().sum(-1, dtype=stats).clamp(min=EPS).rsqrt().to(x.dtype)  # (N, rows)
    return x * row[:, :, None], gram * row[:, :, None] * row[:, None, :]


# bf16 keeps ~3 significant digits; the Gram form follows R = X·Xᵀ, whose rounding errors the iteration does
# not correct (it does correct X's), so in half precision it re-forms X and its Gram matrix every 2 steps
# (Dao AI Lab's restarts). Measured on Muon momentum matrices of a trained model (4:1, AOL, 4 steps): without
# restarts some singular values reach 1.9 (the plain iteration: 1.2) and the result is 8.6 % from the fp32
# iterate; restarted every 2 steps 2.4 % (the plain bf16 loop 1.1 %), singular values in [0.67, 1.20].
GRAM_RESTART_EVERY = 2


def gram_restart_every(dtype: torch.dtype) -> int | None:
    """How many steps the Gram form runs before re-forming X and X·Xᵀ: never in fp32, GRAM_RESTART_EVERY below."""
    return None if dtype in (torch.float32, torch.float64) else GRAM_RESTART_EVERY


def gram_is_cheaper(short: int, long: int, steps: int, restart_every: int | None = None) -> bool:
    """Whether gram_newton_schulz takes fewer flops than the plain iteration for a short × long matrix.

    Counted in short³ units, r = long/short: the plain loop does per step two short²·long matmuls and
    one short³, so steps·(4r + 2). The Gram form runs in n segments (one, or one per restart_every
    steps): the first Gram matrix, and per segment of j steps 4j − 3 short³ matmuls and the product
    Q·X, and per restart a new Gram matrix: 4r·n + 8·steps − 6n. At 4 steps that is r > 1.5 with
    no restarts and with one (n = 2) alike: the MLP's 4:1 matrices (72 against 42, restarted 52), not
    the square attention ones.
    """
    r = long / short
    segments = 1 if restart_every is None else math.ceil(steps / restart_every)
    return steps >= 2 and 4 * r * segments + 8 * steps - 6 * segments < steps * (4 * r + 2)


def gram_newton_schulz(x: Tensor, gram: Tensor, steps: int, restart_every: int | None = None) -> Tensor:
    """The same iteration as orthogonalize's loop, run on the short side's Gram matrix (after Dao AI Lab's
    Gram Newton-Schulz).

    Every iterate is X_k = Q_k·X with Q_k a polynomial in A = X·Xᵀ, so it is enough to follow
    Q_k and R_k = X_k·X_kᵀ, both short × short: Z = a·I + b·R + c·R², Q ← Z·Q, R ← Z·R·Z (Z and R
    commute), and multiply by X once at the end. Errors in R are not corrected by the iteration as
    errors in X are, so with `restart_every` (half precision) X ← Q·X and R ← X·Xᵀ are formed afresh
    after every that many steps.
    """
    if restart_every is not None and restart_every < 1:
        raise ValueError(f"restart_every={restart_every}: restart after 1 step or more, or None for never")
    a, b, c = NS_COEFFICIENTS
    eye = torch.eye(gram.size(-1), dtype=gram.dtype, device=gram.device)
    done = 0
    while True:
        seg = steps - done if restart_every is None else min(restart_every, steps - done)
        r, q = gram, None
        for step in range(seg):
            z = torch.baddbmm(r, r, r, beta=b, alpha=c).add_(eye, alpha=a)  # a·I + b·R + c·R²
            q = z if q is None else torch.bmm(z, q)
            if step < seg - 1:
                r = torch.bmm(z, torch.bmm(r, z))
        x, done = torch.bmm(q, x), done + seg
        if done == steps:
            return x
        gram = torch.bmm(x, x.mT)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; each param group should hold one shape (they are stacked per group)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_steps: int,
                 ns_scaling: str = "frobenius", row_norm: bool = False, beta2: float = 0.95,
                 ns_dtype: torch.dtype = torch.bfloat16) -> None:
        if ns_scaling not in NS_SCALINGS:
            raise ValueError(f"ns_scaling={ns_scaling!r}; choose one of {', '.join(NS_SCALINGS)}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps,
                                  "ns_scaling": ns_scaling, "row_norm": row_norm, "beta2": beta2})
        self.ns_dtype = ns_dtype  # not a group key: a checkpoint resumed on another machine iterates in that one's
        for group in self.param_groups:
            shapes = {tuple(p.shape) for p in group["params"]}
            bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
            if bad:
                raise ValueError(f"Muon orthogonalises matrices; a parameter of shape {bad[0]} is not 2-D "
                                 "(give vectors and embeddings to AdamW)")
            if len(shapes) > 1:
                raise ValueError(f"a Muon param group stacks its matrices, so they must share one shape; got {sorted(shapes)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            momentum = group["momentum"]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            # The buffers are updated in place where they live (one foreach op), and the Nesterov updates are
            # written straight into the stack the iterations take, in their dtype: one pass over each
            # gradient, where stacking the buffers and copying them back, or a second in-place lerp, a stack
            # and a cast, each cost one to three more (the 20M model's 48 matrices, whole optimizer step:
            # 208-224 -> 196-203 ms on a Zen 5 for the in-place buffers; 123.3 -> 121.6 ms on an AMX Xeon for
            # the lerp into the stack, old and new alternating in one process).
            grads = [p.grad for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            stacked = torch.empty((len(grads), *grads[0].shape), dtype=self.ns_dtype, device=grads[0].device)
            for g, buf, out in zip(grads, bufs, stacked.unbind(0)):
                torch.lerp(g, buf, momentum, out=out)
            # A checkpoint from before ns_scaling / row_norm existed resumes as it was trained.
            split = group.get("head_split")  # absent in checkpoints from before muon_split_heads: whole matrices
            scaling = group.get("ns_scaling", "frobenius")
            updates = (orthogonalize(stacked, group["ns_steps"], scaling, self.ns_dtype) if split is None
                       else orthogonalize_heads(stacked, *split, group["ns_steps"], scaling, self.ns_dtype))
            scale = self._neuron_scales(params, updates, group["beta2"]) if group.get("row_norm") else None
            rows, cols = params[0].shape
            step_size = group["lr"] * math.sqrt(max(1.0, rows / cols))
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for i, p in enumerate(params):  # p ← p − step·u (·scale): fp32 arithmetic whatever u's dtype
                if scale is None:
                    p.add_(updates[i], alpha=-step_size)
                else:
                    p.addcmul_(updates[i], scale[i], value=-step_size)
        return loss

    def _neuron_scales(self, params: list[Tensor], updates: Tensor, beta2: float) -> Tensor:
        """NorMuon (Li et al. 2025): the factor (fp32, broadcastable to `updates`) that divides each neuron's
        slice of the orthogonalised update by the running RMS of that neuron's past slices and then rescales
        the whole update to its norm before. Neurons are the rows of a tall or square matrix, the columns of a
        wide one: one per index of the longer side."""
        dim = -1 if updates.size(-2) >= updates.size(-1) else -2  # reduced over: the neurons' slices lie along it
        # A tall matrix's update, and o's under Muon Split, is a transposed view (orthogonalize iterates on the wide
        # side; o's heads are its columns). The statistics are taken on its contiguous form, reducing over the
        # other dim (the same neurons: a square o's are still its rows), and the factor and the state turned
        # back: squaring the transposed view cost 1.6× the contiguous one here.
        transposed = not updates.is_contiguous() and updates.mT.is_contiguous()
        u, dim = (updates.mT, -3 - dim) if transposed else (updates, dim)
        if u.stride(dim) == 1:
            # Along contiguous memory a norm reduction gives the fp32 mean square without an fp32 copy (the
            # square matrices' rows: 1.3 ms against 2.3 for the copy, 32 × 384²); down columns, as for the
            # MLP's matrices, it is 3× slower than the copy (7.5 against 2.6 ms, 8 × 384 × 1536).
            sq = torch.linalg.vector_norm(u, dim=dim, keepdim=True, dtype=torch.float32).square_()
        else:
            sq = u.float().square().sum(dim=dim, keepdim=True)
        sq = sq / u.size(dim)
        v = []
        for p, s in zip(params, sq):
            state = self.state[p]
            if "second_moment" not in state:
                # From zero, as Adam's: its bias is one factor for every neuron, which the rescale undoes.
                # Kept in the parameter's orientation, so a checkpoint reads the same whichever way it was taken.
                state["second_moment"] = torch.zeros_like(s.mT if transposed else s)
            moment = state["second_moment"].mT if transposed else state["second_moment"]
            v.append(moment.lerp_(s, 1 - beta2))
        scale = torch.stack(v).clamp(min=1e-20).rsqrt()
        before = sq.sum(dim=(-2, -1), keepdim=True)
        after = (sq * scale.square()).sum(dim=(-2, -1), keepdim=True)
        scale = scale * (before / after.clamp(min=1e-20)).sqrt()
        return scale.mT if transposed else scale


class MuonWithAdamW:
    """Muon for the matrices, AdamW for the rest, stepped together: what the training loop sees as one optimizer.

    `param_groups` are both optimizers' groups (the same dicts: setting a group's lr reaches the
    optimizer that owns it); each carries its "kind" ("muon" or "adamw") and "name". GradScaler works
    with it as with any optimizer (it unscales the groups' grads, then calls step()).
    """

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        # Read live: load_state_dict gives each optimizer new group dicts.
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None):
        loss = None if closure is None else closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
