"""Selective scan: the project's paths equal the per-timestep reference (fp32, 1e-5), both directions."""

from __future__ import annotations

import pytest
import torch

from gemma3.model import selective_scan as scan_module
from gemma3.model.configuration import VideoMambaConfig
from gemma3.model.selective_scan import (
    causal_conv1d,
    cuda_kernels_available,
    fused_cpu_scan,
    selective_scan,
    selective_scan_fused,
    selective_scan_graph,
    selective_scan_reference,
    selective_scan_torch,
)
from gemma3.model.videomamba import VideoMambaModel


def _inputs(b=2, d=8, n=4, length=37, groups=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bc = (b, groups, n, length) if groups else (b, n, length)
    return dict(u=r(b, d, length), delta=0.5 * r(b, d, length), A=-torch.exp(0.5 * r(d, n)), B=r(*bc), C=r(*bc))


@pytest.mark.parametrize("extras", [{}, {"D": True}, {"z": True}, {"bias": True}, {"D": True, "z": True, "bias": True}])
@pytest.mark.parametrize("softplus", [False, True])
def test_torch_scan_matches_reference(extras, softplus):
    x = _inputs()
    d, length = x["u"].shape[1], x["u"].shape[2]
    kw = dict(delta_softplus=softplus)
    if not softplus:
        x["delta"] = x["delta"].abs()  # a positive step size, as softplus would give
    if extras.get("D"):
        kw["D"] = torch.randn(d)
    if extras.get("z"):
        kw["z"] = torch.randn(2, d, length)
    if extras.get("bias"):
        kw["delta_bias"] = 0.1 * torch.randn(d)
    ref = selective_scan_reference(**x, **kw)
    for block in (1, 5, 64):
        torch.testing.assert_close(selective_scan_torch(**x, **kw, block=block), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(selective_scan_fused(**x, **kw), ref, rtol=1e-5, atol=1e-5)


def test_fused_cpu_scan_is_built_here():
    """The machines the project runs on have a C++ compiler and ninja (requirements.txt): the fused scan builds."""
    assert fused_cpu_scan() is not None


@pytest.mark.parametrize("n", [4, 8, 16, 24])
def test_fused_scan_every_state_size_long_sequences_and_dtypes(n):
    """Each compiled state size (8, 16) and the generic loop; a long sequence with decays from ~1 to far below
    fp32's range (exp of -80 and less); bf16 inputs give bf16 outputs computed in fp32."""
    x = _inputs(b=1, d=6, n=n, length=700, seed=n)
    x["A"] = -torch.logspace(-3, 2.5, n).expand(6, n).contiguous()  # decays exp(delta * A) down to ~exp(-300)
    kw = dict(D=torch.randn(6), z=torch.randn(1, 6, 700), delta_bias=0.1 * torch.randn(6), delta_softplus=True)
    ref = selective_scan_reference(**x, **kw)
    scale = float(ref.abs().max())  # |y| ~ 100 after 700 slow-decaying steps: fp32 rounding of the order 1e-6 of it
    torch.testing.assert_close(selective_scan_fused(**x, **kw), ref, rtol=1e-5, atol=4e-6 * scale)
    torch.testing.assert_close(selective_scan_torch(**x, **kw), ref, rtol=1e-5, atol=4e-6 * scale)  # same budget
    half = {k: v.bfloat16() for k, v in x.items()}
    out = selective_scan_fused(**half, **kw)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), selective_scan_reference(**half, **kw).float(), rtol=2e-2, atol=2e-2)


def test_backward_direction_and_grouped_scan():
    f, b = _inputs(seed=1), _inputs(seed=2)
    rev = {k: (v.flip(-1) if k in ("u", "delta", "B", "C") else v) for k, v in b.items()}
    ref_f = selective_scan_reference(**f, delta_softplus=True)
    ref_b = selective_scan_reference(**rev, delta_softplus=True)
    torch.testing.assert_close(selective_scan_torch(**rev, delta_softplus=True), ref_b, rtol=1e-5, atol=1e-5)
    both = selective_scan_torch(
        torch.cat([f["u"], rev["u"]], 1),
        torch.cat([f["delta"], rev["delta"]], 1),
        torch.cat([f["A"], rev["A"]]),
        torch.stack([f["B"], rev["B"]], 1),
        torch.stack([f["C"], rev["C"]], 1),
        delta_softplus=True,
    )
    torch.testing.assert_close(both, torch.cat([ref_f, ref_b], 1), rtol=1e-5, atol=1e-5)


def test_graph_scan_matches_reference_and_is_what_export_traces():
    """`selective_scan_graph` (torch's scan operator, exported as one ONNX Scan) equals the reference, grouped too;
    `selective_scan` takes it while torch.export traces."""
    x = _inputs(groups=2, d=8, seed=3)
    kw = dict(D=torch.randn(8), z=torch.randn(2, 8, 37), delta_bias=0.1 * torch.randn(8), delta_softplus=True)
    torch.testing.assert_close(
        selective_scan_graph(**x, **kw), selective_scan_reference(**x, **kw), rtol=1e-5, atol=1e-5
    )

    class Scan(torch.nn.Module):
        def forward(self, u):
            return selective_scan(u, x["delta"], x["A"], x["B"], x["C"], **kw)

    program = torch.export.export(Scan(), (x["u"],))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("scan" in t for t in targets), targets
    torch.testing.assert_close(program.module()(x["u"]), selective_scan_reference(**x, **kw), rtol=1e-5, atol=1e-5)


def test_gradients_match_reference():
    x = _inputs(length=19)
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    ref = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    selective_scan_torch(**leaves, delta_softplus=True, block=4).pow(2).sum().backward()
    selective_scan_reference(**ref, delta_softplus=True).pow(2).sum().backward()
    for k in x:
        torch.testing.assert_close(leaves[k].grad, ref[k].grad, rtol=1e-4, atol=1e-4)


def test_dispatch_on_cpu_fused_with_and_without_gradients_blocked_without_the_kernel(monkeypatch):
    x = _inputs()
    x["delta"] = x["delta"].abs()  # a positive step size, as softplus would give
    calls = []
    fused = scan_module.selective_scan_fused
    monkeypatch.setattr(scan_module, "selective_scan_fused", lambda *a, **k: calls.append(1) or fused(*a, **k))
    ref = selective_scan_reference(**x)
    torch.testing.assert_close(selective_scan(**x), ref, rtol=1e-5, atol=1e-5)
    assert calls == [1]  # inference: the fused kernel
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y = selective_scan(**leaves)
    assert calls == [1, 1] and y.grad_fn is not None  # training: the fused kernel with its backward
    torch.testing.assert_close(y.detach(), ref, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(scan_module, "fused_cpu_scan_backward", lambda: None)  # a library without the backward
    assert selective_scan(**leaves).grad_fn is not None and calls == [1, 1]  # the blocked path, differentiable
    monkeypatch.setattr(scan_module, "fused_cpu_scan", lambda: None)  # a machine without a compiler
    torch.testing.assert_close(selective_scan(**x), ref, rtol=1e-5, atol=1e-5)
    assert calls == [1, 1]
    if not torch.cuda.is_available():
        assert not cuda_kernels_available()


def _gradients(fn, inputs: dict, kw: dict, dy: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """fn's output and the gradients of every tensor input for the output gradient ``dy``."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves, **kw)
    y.backward(dy)
    return y.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("n", [5, 8, 16])
@pytest.mark.parametrize("groups", [0, 2])
@pytest.mark.parametrize("extras", [False, True])
def test_fused_scan_gradients_match_reference(n, groups, extras):
    """The kernel's backward: gradients of u, delta, A, B, C (and of D, z and delta's bias through the PyTorch ops
    around it) equal the reference's autograd ones, over full and partial channel tiles (40 channels, 20 a group
    when grouped) and two batch rows."""
    x = _inputs(b=2, d=40, n=n, length=29, groups=groups, seed=10 * n + groups)
    kw = {"delta_softplus": extras}
    if extras:
        x.update(D=torch.randn(40), z=torch.randn(2, 40, 29), delta_bias=0.1 * torch.randn(40))
    else:
        x["delta"] = x["delta"].abs()
    dy = torch.randn(2, 40, 29)
    y_ref, ref = _gradients(selective_scan_reference, x, kw, dy)
    y, ours = _gradients(selective_scan_fused, x, kw, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for k in x:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_fused_scan_trains_a_videomamba_as_the_blocked_path_does(monkeypatch):
    """One training step of a small bidirectional VideoMamba: the same loss and parameter gradients through the
    fused kernel's backward as through the blocked PyTorch scan (what trained it before)."""
    torch.manual_seed(0)
    model = VideoMambaModel(VideoMambaConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, d_state=8,
                                             num_frames=4, out_grid=2))  # fmt: skip
    video = torch.randn(2, 4, 3, 32, 32)

    def step() -> tuple[torch.Tensor, dict]:
        model.zero_grad()
        loss = model(video).pow(2).mean()
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    calls = []
    fused = scan_module.selective_scan_fused
    monkeypatch.setattr(scan_module, "selective_scan_fused", lambda *a, **k: calls.append(1) or fused(*a, **k))
    loss, grads = step()
    assert calls, "the fused scan did not run"
    monkeypatch.setattr(scan_module, "fused_cpu_scan", lambda: None)
    loss_ref, grads_ref = step()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys() and any("A_b_log" in k for k in grads)  # both directions trained
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_causal_conv_is_causal():
    x = torch.randn(1, 3, 10)
    w = torch.randn(3, 4)
    y = causal_conv1d(x, w, None, activation=None)
    x2 = x.clone()
    x2[..., 6:] += 5.0  # change the future
    y2 = causal_conv1d(x2, w, None, activation=None)
    torch.testing.assert_close(y[..., :6], y2[..., :6])
    assert not torch.allclose(y[..., 6:], y2[..., 6:])


def test_missing_kernels_on_cuda_are_reported_once_and_can_be_required(monkeypatch, caplog):
    import gemma3.model.selective_scan as S

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine without the kernels
    S._warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="gemma3.model.selective_scan"):
        assert S.check_kernels() is False
        assert S.check_kernels() is False
    warnings = [r for r in caplog.records if "kernels do not import" in r.message]
    assert len(warnings) == 1 and "mamba_ssm: " in warnings[0].message  # with the import error itself
    with pytest.raises(RuntimeError, match=r"do not import .*--require_kernels"):
        S.check_kernels(require=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert S.check_kernels(require=True) is False  # no CUDA: the PyTorch scan is the path, nothing to say


@pytest.fixture(scope="module")
def mamba_ref():
    """mamba-ssm 2.3.1's own ``selective_scan_ref``, compiled from its published source (.ci/run downloads the
    sdist into .cache/upstream)."""
    from gemma3.model.upstream import mamba_selective_scan_ref

    try:
        return mamba_selective_scan_ref()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("groups", [0, 2])
def test_project_scans_match_mamba_ssm_selective_scan_ref(mamba_ref, groups):
    """Forward (every path) and gradients of every input equal mamba-ssm's reference, ungrouped and with grouped
    B/C (both directions of a bidirectional layer in one call)."""
    x = _inputs(groups=groups, length=23, seed=4)
    d, length = x["u"].shape[1], x["u"].shape[2]
    kw = dict(D=torch.randn(d), z=torch.randn(2, d, length), delta_bias=0.1 * torch.randn(d), delta_softplus=True)
    ref = mamba_ref(**x, **kw)
    for name, fn in [("reference", selective_scan_reference), ("blocked", selective_scan_torch),
                     ("graph", selective_scan_graph), ("fused", selective_scan_fused)]:  # fmt: skip
        torch.testing.assert_close(fn(**x, **kw), ref, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    inputs = {k: v for k, v in {**x, **kw}.items() if torch.is_tensor(v)}
    theirs = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    mamba_ref(**theirs, delta_softplus=True).pow(2).sum().backward()
    for name, fn in [("blocked", lambda **a: selective_scan_torch(**a, block=8)), ("fused", selective_scan_fused)]:
        ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        fn(**ours, delta_softplus=True).pow(2).sum().backward()
        for k in ours:
            torch.testing.assert_close(ours[k].grad, theirs[k].grad, rtol=1e-4, atol=1e-4,
                                       msg=lambda m, k=k, n=name: f"{n}, {k}: {m}")  # fmt: skip


def test_upstream_loader_names_what_it_looked_for(tmp_path):
    from gemma3.model.upstream import mamba_selective_scan_ref

    with pytest.raises(FileNotFoundError, match="pip download .*mamba-ssm==2.3.1"):
        mamba_selective_scan_ref(tmp_path / "missing.tar.gz")
    (tmp_path / "src").mkdir()
    with pytest.raises(FileNotFoundError, match="has no mamba_ssm/ops/selective_scan_interface.py"):
        mamba_selective_scan_ref(tmp_path / "src")


@pytest.mark.parametrize("n", [5, 16])
@pytest.mark.parametrize("groups", [0, 2])
def test_fused_scan_full_and_partial_channel_tiles(n, groups):
    """The kernel runs 16 channels at a time and a group's last channels one by one: 40 channels (20 a group when
    grouped) cover both, in two batch rows."""
    x = _inputs(b=2, d=40, n=n, length=53, groups=groups, seed=n + groups)
    kw = dict(D=torch.randn(40), z=torch.randn(2, 40, 53), delta_bias=0.1 * torch.randn(40), delta_softplus=True)
    torch.testing.assert_close(
        selective_scan_fused(**x, **kw), selective_scan_reference(**x, **kw), rtol=1e-5, atol=1e-5
    )
