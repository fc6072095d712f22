"""Muon (ngpt/train/muon.py): the same step as torch.optim.Muon, groups checked, and gradient
accumulation and DDP give the update a single process with the whole batch gives.

    pytest tests/test_muon.py
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fixtures import classic_model
from ngpt.batches import Batch
from ngpt.device import Precision
from ngpt.model import GPT
from ngpt.settings import ModelSettings, TrainSettings
from ngpt.train import muon
from ngpt.train.muon import (NS_COEFFICIENTS, Muon, MuonWithAdamW, aol_scaled, gram_is_cheaper, gram_newton_schulz,
                             gram_restart_every, orthogonalize, orthogonalize_heads)
from ngpt.train.optim import make_optimizer, parameter_groups
from ngpt.train.step import accumulate_gradients, autocast_factory, optimizer_step

FP32 = autocast_factory(torch.device("cpu"), Precision(False, None, False))
MODEL = ModelSettings(vocab_size=97, seq_len=32, n_embd=32, n_layer=2, n_head=4, **classic_model())  # with gains: all four groups
MUON = TrainSettings(optimizer="muon", muon_lr=0.05, embed_lr=0.05, head_lr=0.01, scalar_lr=0.01, weight_decay=0.0,
                     grad_clip=0.0)


@pytest.mark.parametrize("shape", [(24, 24), (40, 16), (16, 40)])
def test_a_step_equals_torch_optim_muon(shape):
    """Same lr (×√max(1, rows/cols)), Nesterov momentum, decoupled weight decay and Newton-Schulz, several steps."""
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(*shape, generator=gen)
    grads = [torch.randn(*shape, generator=gen) for _ in range(3)]
    ours_p, ref_p = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    ours = Muon([ours_p], lr=0.02, momentum=0.9, weight_decay=0.1, ns_steps=5)
    ref = torch.optim.Muon([ref_p], lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=True, ns_steps=5,
                           adjust_lr_fn="original")
    for g in grads:
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    # Both iterate in bf16, and the rectangular shapes here take the restarted Gram form, which rounds otherwise
    # than torch's plain loop (measured: up to 1.4e-3 apart after 3 steps); a wrong lr factor, momentum or
    # decay is off by ≥ 1e-2.
    torch.testing.assert_close(ours_p.data, ref_p.data, rtol=0, atol=3e-3)
    assert (ours_p.data - init).abs().max() > 0.02  # the steps moved it


@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (64, 64)])
def test_aol_scaling_starts_newton_schulz_nearer_the_polar_factor(shape):
    """On gradient-like matrices (a low-rank signal in noise): after 4 iterations AOL is nearer U·Vᵀ than ‖·‖_F on
    every shape, and on the MLP's 4:1 shapes as near as ‖·‖_F after 5 (the iteration it saves)."""
    gen = torch.Generator().manual_seed(0)
    rows, cols = shape
    g = torch.randn(4, rows, 4, generator=gen) @ torch.randn(4, 4, cols, generator=gen) + 0.3 * torch.randn(4, rows, cols, generator=gen)
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = u @ vh

    def cosine(x):
        x = x.double()
        return ((x * polar).sum((-2, -1)) / (x.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))).min().item()

    aol4 = orthogonalize(g, 4, "aol")
    assert aol4.shape == g.shape and cosine(aol4) > cosine(orthogonalize(g, 4, "frobenius"))
    if rows != cols:
        assert cosine(aol4) >= cosine(orthogonalize(g, 5, "frobenius")) - 0.002
    assert torch.equal(orthogonalize(torch.zeros(2, rows, cols), 4, "aol"), torch.zeros(2, rows, cols).bfloat16())


def newton_schulz_from_the_definition(g, steps, scaling):
    """The plain iteration in float64 on the wide side: X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ."""
    a, b, c = NS_COEFFICIENTS
    tall = g.size(-2) > g.size(-1)
    x = (g.mT if tall else g).double()
    if scaling == "frobenius":
        x = x / x.norm(dim=(-2, -1), keepdim=True)
    else:
        x = x / (x @ x.mT).abs().sum(-1, keepdim=True).sqrt()
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


@pytest.mark.parametrize("scaling", ["frobenius", "aol"])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (32, 128), (24, 24)])
def test_fp32_iterations_equal_the_plain_newton_schulz(shape, scaling):
    """fp32 runs rectangular matrices through the Gram-matrix form (Q·X with Q a polynomial in X·Xᵀ), square ones
    through the plain loop; both give the definition's iterate."""
    g = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    assert gram_is_cheaper(min(shape), max(shape), 4) == (shape[0] != shape[1])
    ours = orthogonalize(g, 4, scaling, dtype=torch.float32)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), newton_schulz_from_the_definition(g, 4, scaling), rtol=0, atol=1e-4)


def test_the_gram_form_is_chosen_where_it_saves_flops():
    """4r·n + 8k − 6n < k(4r + 2) short³ units (r = long/short, k steps, n segments between restarts): at 4 steps
    from r > 1.5 with or without a restart, never when square or with one step."""
    for restart in (None, 2):
        assert not gram_is_cheaper(384, 384, 4, restart) and not gram_is_cheaper(384, 576, 4, restart)
        assert gram_is_cheaper(384, 577, 4, restart) and gram_is_cheaper(384, 1536, 4, restart)
        assert not gram_is_cheaper(16, 1600, 1, restart)
    assert gram_is_cheaper(384, 1536, 5) and gram_is_cheaper(384, 1536, 5, 2)
    assert not gram_is_cheaper(384, 1536, 8, 1)  # a restart every step re-forms X·Xᵀ as often as the plain loop


def ill_conditioned(n, rows, cols, gen):
    """n wide matrices with singular values spread from 1 to 1e-3, as late-training momentum buffers are."""
    u, _ = torch.linalg.qr(torch.randn(n, rows, rows, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, cols, rows, generator=gen))
    return u @ torch.diag(torch.logspace(0, -3, rows)) @ v.mT


def aol_start(g, dtype):
    """orthogonalize's AOL start for a wide stack g, in `dtype`."""
    x = g.to(dtype)
    return aol_scaled(x, torch.bmm(x, x.mT))


@pytest.mark.parametrize("restart", [1, 2, 3])
def test_a_restarted_gram_form_is_still_the_plain_iteration(restart):
    """Re-forming X and X·Xᵀ between segments changes nothing in exact arithmetic (float64 here)."""
    g = torch.randn(3, 16, 48, generator=torch.Generator().manual_seed(4))
    x, gram = aol_start(g, torch.float64)
    ours = gram_newton_schulz(x, gram, 4, restart_every=restart)
    torch.testing.assert_close(ours, newton_schulz_from_the_definition(g, 4, "aol"), rtol=0, atol=1e-10)


def test_bf16_iterations_restart_the_gram_form_and_stay_near_the_plain_loops_accuracy(monkeypatch):
    """In bf16 the Gram form drifts (errors in X·Xᵀ are not corrected), so orthogonalize restarts it; on an
    ill-conditioned 4:1 stack it then lands about as near the float64 iterate as orthogonalize's own plain
    bf16 loop, where the unrestarted form overshoots."""
    g = ill_conditioned(4, 32, 128, torch.Generator().manual_seed(0))
    exact = newton_schulz_from_the_definition(g, 4, "aol")

    def error(x):
        return ((x.double() - exact).norm() / exact.norm()).item()

    assert gram_restart_every(torch.bfloat16) == 2 and gram_is_cheaper(32, 128, 4, 2)  # this stack takes the Gram form
    ours = orthogonalize(g, 4, "aol", dtype=torch.bfloat16)
    assert error(ours) < 0.1 and torch.linalg.svdvals(ours.double()).max() < 1.25
    x, gram = aol_start(g, torch.bfloat16)
    assert error(gram_newton_schulz(x, gram, 4)) > 0.5  # why the restarts exist
    monkeypatch.setattr(muon, "gram_is_cheaper", lambda *args: False)
    plain_loop = orthogonalize(g, 4, "aol", dtype=torch.bfloat16)
    assert not torch.equal(ours, plain_loop)  # orthogonalize did take the Gram form
    assert error(ours) < 1.5 * error(plain_loop)


def test_a_restart_interval_below_one_is_refused():
    x, gram = aol_start(torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0)), torch.float64)
    with pytest.raises(ValueError, match="restart_every"):
        gram_newton_schulz(x, gram, 4, restart_every=0)


def test_a_state_saved_before_ns_scaling_existed_steps_with_frobenius():
    """Checkpoints of earlier releases carry Muon groups without ns_scaling and row_norm: they resume as they were trained."""
    gen = torch.Generator().manual_seed(3)
    init, grad = torch.randn(16, 24, generator=gen), torch.randn(16, 24, generator=gen)
    old_p, ref_p = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    saved = Muon([old_p], lr=0.02, momentum=0.9, weight_decay=0.0, ns_steps=5).state_dict()
    for key in ("ns_scaling", "row_norm", "beta2"):
        del saved["param_groups"][0][key]
    old = Muon([old_p], lr=0.02, momentum=0.9, weight_decay=0.0, ns_steps=5, ns_scaling="aol", row_norm=True)
    old.load_state_dict(saved)
    ref = Muon([ref_p], lr=0.02, momentum=0.9, weight_decay=0.0, ns_steps=5, ns_scaling="frobenius")
    old_p.grad, ref_p.grad = grad.clone(), grad.clone()
    old.step()
    ref.step()
    assert torch.equal(old_p.data, ref_p.data)


@pytest.mark.parametrize("shape", [(24, 24), (40, 16), (16, 40)])
def test_row_norm_is_normuon_written_from_its_definition(shape):
    """muon_row_norm: each neuron's slice (rows of a tall or square matrix, columns of a wide one) of the
    orthogonalised update ÷ √(EMA of its mean square), rescaled to the update's norm; two same-shape
    matrices stacked give what each gives alone."""
    gen = torch.Generator().manual_seed(1)
    inits = [torch.randn(*shape, generator=gen) for _ in range(2)]
    # Low-rank gradients: their orthogonalised rows differ in size, which the normalisation evens out.
    grads = [[torch.randn(shape[0], 2, generator=gen) @ torch.randn(2, shape[1], generator=gen)
              + 0.1 * torch.randn(*shape, generator=gen) for _ in range(2)] for _ in range(3)]
    ours = [torch.nn.Parameter(w.clone()) for w in inits]
    opt = Muon(ours, lr=0.02, momentum=0.9, weight_decay=0.0, ns_steps=4, ns_scaling="aol", row_norm=True, beta2=0.9)
    for step_grads in grads:
        for p, g in zip(ours, step_grads):
            p.grad = g.clone()
        opt.step()
    dim = 1 if shape[0] >= shape[1] else 0
    for i, w in enumerate(inits):
        w, buf, v = w.clone(), torch.zeros(shape), torch.zeros(shape[1 - dim]).unsqueeze(dim)
        for step_grads in grads:
            g = step_grads[i]
            buf = buf.lerp(g, 0.1)
            o = orthogonalize(g.lerp(buf, 0.9)[None], 4, "aol")[0].float()
            v = 0.9 * v + 0.1 * o.square().mean(dim, keepdim=True)
            normed = o / v.sqrt()
            w -= 0.02 * max(1.0, shape[0] / shape[1]) ** 0.5 * normed * (o.norm() / normed.norm())
        torch.testing.assert_close(ours[i].data, w, rtol=0, atol=1e-4)  # the update is applied from bf16
        # The state keeps the parameter's orientation (a tall matrix's statistics are taken transposed).
        assert opt.state[ours[i]]["second_moment"].shape == v.shape
    plain = torch.nn.Parameter(inits[0].clone())
    plain_opt = Muon([plain], lr=0.02, momentum=0.9, weight_decay=0.0, ns_steps=4, ns_scaling="aol")
    for step_grads in grads:
        plain.grad = step_grads[0].clone()
        plain_opt.step()
    assert (plain.data - ours[0].data).abs().max() > 1e-3  # ten times the agreement above: it changed the steps


@pytest.mark.parametrize("shape", [(24, 24), (40, 16), (16, 40)])
def test_row_norm_takes_the_same_neurons_from_a_transposed_view(shape):
    """A tall update, or o's under Muon Split, reaches NorMuon as a transposed view: it must normalise the same
    neurons (a square matrix's rows) and keep the same state as the contiguous update would."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=gen)) for _ in range(2)]
    contiguous = torch.randn(2, *shape, generator=gen)
    view = contiguous.mT.contiguous().mT  # the same values, laid out transposed
    assert not view.is_contiguous() or shape[0] == 1
    opts = [Muon(params, lr=0.02, momentum=0.9, weight_decay=0.0, ns_steps=4, row_norm=True) for _ in range(2)]
    for _ in range(2):  # twice: the second step reads the state the first left
        a = opts[0]._neuron_scales(params, contiguous, 0.9)
        b = opts[1]._neuron_scales(params, view, 0.9)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
        for p in params:
            torch.testing.assert_close(opts[0].state[p]["second_moment"], opts[1].state[p]["second_moment"], rtol=1e-6, atol=0)


def test_muon_refuses_what_it_cannot_orthogonalise():
    with pytest.raises(ValueError, match=r"shape \(8,\) is not 2-D"):
        Muon([torch.nn.Parameter(torch.zeros(8))], lr=0.02, momentum=0.95, weight_decay=0.0, ns_steps=5)
    with pytest.raises(ValueError, match="must share one shape"):
        Muon([torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(3, 2))], lr=0.02, momentum=0.95,
             weight_decay=0.0, ns_steps=5)
    with pytest.raises(ValueError, match="ns_scaling='spectral'; choose one of frobenius, aol"):
        Muon([torch.nn.Parameter(torch.zeros(2, 3))], lr=0.02, momentum=0.95, weight_decay=0.0, ns_steps=5,
             ns_scaling="spectral")


def test_groups_give_muon_the_matrices_and_adamw_the_rest():
    model = GPT(MODEL.model_copy(update={"tie_embeddings": False}))
    groups = parameter_groups(model)
    opt = make_optimizer(model, MUON, model.cfg, torch.device("cpu"), 1024)
    assert isinstance(opt, MuonWithAdamW)
    muon_params = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert muon_params == {id(p) for p in groups["matrices"]} and all(p.dim() == 2 for p in groups["matrices"])
    adam = {g["name"]: g for g in opt.adamw.param_groups}
    assert set(adam) == {"embedding", "head", "scalars"} and adam["head"]["params"] == [model.lm_head.weight]
    assert adam["scalars"]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in adam["scalars"]["params"])


@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_split_heads_orthogonalises_each_heads_block_alone(axis):
    """muon_split_heads: every head's rows (q, k, v) or columns (o) come out as orthogonalize makes that block alone,
    so the blocks are each orthonormal, and the whole matrix is not what orthogonalising it whole gives."""
    gen = torch.Generator().manual_seed(3)
    stack = torch.randn(3, 24, 24, generator=gen)
    got = orthogonalize_heads(stack, axis, 4, 5, "frobenius", torch.float32)
    for n in range(3):
        for h in range(4):
            rows = slice(6 * h, 6 * h + 6)
            block = stack[n, rows] if axis == "rows" else stack[n, :, rows].T
            want = orthogonalize(block[None], 5, "frobenius", torch.float32)[0]
            mine = got[n, rows] if axis == "rows" else got[n, :, rows].T
            torch.testing.assert_close(mine, want, rtol=0, atol=1e-6)
            assert torch.linalg.svdvals(mine).min() > 0.6  # each block is near-orthonormal (the quintic's band)
    whole = orthogonalize(stack, 5, "frobenius", torch.float32)
    assert (whole - got).abs().max() > 0.1
    with pytest.raises(ValueError, match="24-row side does not split into 5 heads"):
        orthogonalize_heads(stack, axis, 5, 5)


def test_split_heads_groups_qkv_by_rows_and_o_by_columns():
    model = GPT(MODEL)
    opt = make_optimizer(model, MUON.model_copy(update={"muon_split_heads": True}), model.cfg, torch.device("cpu"), 1024)
    splits = {}
    for group in opt.muon.param_groups:
        for p in group["params"]:
            splits[id(p)] = group["head_split"]
    for block in model.blocks:
        a = block.attn
        assert [splits[id(m.weight)] for m in (a.q, a.k, a.v, a.o)] == [("rows", 4)] * 3 + [("cols", 4)]
    mlp = [p for n, p in model.named_parameters() if ".mlp." in n]
    assert mlp and all(splits[id(p)] is None for p in mlp)
    whole = make_optimizer(model, MUON.model_copy(update={"muon_split_heads": False}), model.cfg, torch.device("cpu"), 1024)
    assert all(g["head_split"] is None for g in whole.muon.param_groups)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_each_group_takes_its_own_weight_decay(optimizer):
    """weight_decay for the matrices, embed_/head_weight_decay for the tables (None: weight_decay's), never the gains."""
    model = GPT(MODEL.model_copy(update={"tie_embeddings": False}))
    cfg = MUON.model_copy(update={"optimizer": optimizer, "weight_decay": 0.2, "embed_weight_decay": 0.05})
    opt = make_optimizer(model, cfg, model.cfg, torch.device("cpu"), 1024)
    decay = {}
    for group in opt.param_groups:
        decay.setdefault(group["name"], set()).add(group["weight_decay"])
    assert decay == {"matrices": {0.2}, "embedding": {0.05}, "head": {0.2}, "scalars": {0.0}}
    cfg = cfg.model_copy(update={"head_weight_decay": 0.0})
    heads = [g for g in make_optimizer(model, cfg, model.cfg, torch.device("cpu"), 1024).param_groups if g["name"] == "head"]
    assert [g["weight_decay"] for g in heads] == [0.0]


def _batches(x: torch.Tensor, y: torch.Tensor, micro: int):
    parts = iter([Batch(x[i:i + micro], y[i:i + micro], None) for i in range(0, len(x), micro)])
    return lambda: next(parts)


def _step(model: GPT, batch_fn, accum: int, opt) -> None:
    accumulate_gradients(model, batch_fn, accum_steps=accum, autocast=FP32, scaler=None, device=torch.device("cpu"))
    optimizer_step(opt, model.parameters(), scaler=None, grad_clip=1.0)


def test_accumulation_gives_the_update_of_the_doubled_batch():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 97, (4, 32), generator=gen), torch.randint(0, 97, (4, 32), generator=gen)
    models = []
    for accum in (1, 2):
        torch.manual_seed(0)
        model = GPT(MODEL)
        opt = make_optimizer(model, MUON, model.cfg, torch.device("cpu"), 4 * 32)
        for _ in range(2):
            _step(model, _batches(x, y, 4 // accum), accum, opt)
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        # bf16 Newton-Schulz on inputs equal up to fp32 summation order: within 2 % of one step (lr·√4 = 0.1)
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)
    assert not torch.equal(models[0].blocks[0].attn.q.weight, GPT(MODEL).blocks[0].attn.q.weight)


def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = GPT(MODEL)
    ddp = DDP(model)
    opt = make_optimizer(model, MUON, model.cfg, torch.device("cpu"), 2 * 2 * 32 * world)
    gen = torch.Generator().manual_seed(10 + rank)  # each rank its own data
    for _ in range(3):
        x, y = torch.randint(0, 97, (4, 32), generator=gen), torch.randint(0, 97, (4, 32), generator=gen)
        accumulate_gradients(ddp, _batches(x, y, 2), accum_steps=2, autocast=FP32, scaler=None,
                             device=torch.device("cpu"), ddp=True)
        optimizer_step(opt, model.parameters(), scaler=None, grad_clip=1.0)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    out[rank] = bool(torch.equal(gathered[0], gathered[1]))
    dist.destroy_process_group()


def test_ddp_ranks_take_the_identical_muon_update():
    """After the all-reduce every rank holds the same gradient, and Muon is deterministic: same weights everywhere."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
        assert dict(out) == {0: True, 1: True}
