"""MoE ops vs torch references: routing (softmax + top-k, the lowest-id tie rule), the padded expert layout, the
grouped expert GEMM (CPU path and the Triton kernel under the interpreter, forward and backward) and the combine."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.kernels.moe_gemm import _grouped_triton, grouped_linear, grouped_linear_reference, moe_block_m
from onpolicy.kernels.moe_routing import moe_layout, moe_route, moe_route_reference, num_layout_blocks

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2)]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_matches_transformers_maths(normalize, dtype):
    logits = torch.randn(37, 16).to(dtype)
    w, ids = moe_route(logits, 4, normalize)
    rw, rids = moe_route_reference(logits, 4, normalize)
    assert torch.equal(ids, rids) and w.dtype == torch.float32
    torch.testing.assert_close(w, rw, atol=1e-6, rtol=1e-6)
    if normalize:
        torch.testing.assert_close(w.sum(-1), torch.ones(37), atol=1e-6, rtol=0)


def test_route_ties_pick_the_lowest_expert_id():
    # experts 2, 5, 6 tie at the top-2 boundary; 7 is first: the pick is 7 then 2 (lowest id among equals)
    row = torch.tensor([0.1, 0.0, 0.5, 0.2, -1.0, 0.5, 0.5, 2.0])
    w, ids = moe_route(row[None], 2, normalize=False)
    assert ids.tolist() == [[7, 2]]
    # all equal: experts 0..k-1, equal weights
    w, ids = moe_route(torch.zeros(3, 8), 3, normalize=True)
    assert ids.tolist() == [[0, 1, 2]] * 3 and torch.equal(w, torch.full((3, 3), 1 / 3))
    # a reversed copy of a tied row is ranked by id, not by position
    _, ids = moe_route(torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]]).flip(1), 2, normalize=False)
    assert ids.tolist() == [[1, 2]]


def test_route_gradient_matches_reference():
    x = torch.randn(9, 8, dtype=torch.float64).float().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    g = torch.randn(9, 3)
    (moe_route(x, 3, True)[0] * g).sum().backward()
    (moe_route_reference(xr, 3, True)[0] * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("t,k,e,bm", [(1, 1, 4, 4), (13, 3, 8, 4), (40, 8, 16, 64), (5, 2, 64, 8)])
def test_layout_places_every_pair_once_in_single_expert_blocks(t, k, e, bm):
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)])
    lay = moe_layout(ids, e, bm)
    assert lay.num_rows == num_layout_blocks(t * k, e, bm) * bm
    rows = lay.pair_row.flatten()
    assert rows.unique().numel() == t * k
    assert torch.equal(lay.row_token[lay.pair_row], torch.arange(t)[:, None].expand(t, k))
    block_of_pair = lay.block_expert[lay.pair_row // bm].long()
    assert torch.equal(block_of_pair, ids)  # each pair's block belongs to its expert
    assert int((lay.row_token >= 0).sum()) == t * k
    assert torch.equal(lay.expert_count, torch.bincount(ids.flatten(), minlength=e))
    # within an expert, pairs keep their pair order (tokens ascending)
    for x in range(e):
        s, c = int(lay.expert_start[x]), int(lay.expert_count[x])
        assert torch.equal(lay.row_token[s : s + c], (ids == x).nonzero()[:, 0])


def _case(t, k, e, n, kk, dtype):
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)])
    x = torch.randn(t, kk).to(dtype)
    w = (torch.randn(e, n, kk) / kk**0.5).to(dtype)
    return ids, x, w


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_grouped_linear_forward_backward_vs_reference(dtype, atol, rtol):
    ids, x, w = _case(21, 3, 6, 24, 40, dtype)
    lay = moe_layout(ids, 6, moe_block_m(dtype))
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
    y = grouped_linear(xi, wi, lay, gather=True)
    ref = grouped_linear_reference(xr, wr, ids)
    torch.testing.assert_close(y[lay.pair_row].float(), ref, atol=atol, rtol=rtol)
    assert not y[lay.row_token < 0].any()  # padding rows are zero
    g = torch.randn(ref.shape)
    grad_rows = torch.zeros(y.shape)
    grad_rows[lay.pair_row] = g
    y.backward(grad_rows.to(dtype))
    ref.backward(g)
    torch.testing.assert_close(xi.grad.float(), xr.grad, atol=atol * 4, rtol=rtol)
    torch.testing.assert_close(wi.grad.float(), wr.grad, atol=atol * 20, rtol=rtol)


def test_grouped_linear_padded_input_and_reference_mode():
    ids, x, w = _case(10, 2, 4, 16, 24, torch.float32)
    lay = moe_layout(ids, 4, moe_block_m(torch.float32))
    a = grouped_linear(x, torch.randn(4, 24, 24), lay, gather=True)  # padded-layout activations
    y = grouped_linear(a, w, lay, gather=False)
    with kernels.invariant_mode(False):
        y_ref = grouped_linear(a, w, lay, gather=False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t,k,e,n,kk", [(1, 1, 2, 16, 16), (9, 2, 4, 40, 70), (70, 2, 3, 20, 32)])
@pytest.mark.parametrize("gather", [True, False])
def test_grouped_triton_interpreter_fp32(t, k, e, n, kk, gather):
    # bf16 tl.dot is unreliable under the CPU interpreter (see test_matmul.py): fp32 only here
    ids, x, w = _case(t, k, e, n, kk, torch.float32)
    lay = moe_layout(ids, e, moe_block_m(torch.float32))
    a = x if gather else x[lay.row_token.clamp(min=0)] * (lay.row_token >= 0)[:, None]
    y = _grouped_triton(a, w, lay, gather)
    torch.testing.assert_close(y[lay.pair_row], grouped_linear_reference(x, w, ids), atol=1e-4, rtol=1e-5)
    # the backward's transposed weight view (strides, no copy)
    yt = _grouped_triton(y, w.transpose(1, 2), lay, False)
    ref = torch.einsum("tkn,tknm->tkm", y[lay.pair_row], w[ids])
    torch.testing.assert_close(yt[lay.pair_row], ref, atol=1e-4, rtol=1e-5)


def test_grouped_triton_row_alone_equals_row_in_batch_interpreter():
    """A token's row is torch.equal whether it is alone with its experts or shares their blocks with others."""
    e, k = 4, 2
    ids, x, w = _case(48, k, e, 24, 40, torch.float32)
    full = moe_layout(ids, e, moe_block_m(torch.float32))
    y_all = _grouped_triton(x, w, full, True)[full.pair_row]
    for i in (0, 17, 47):
        one = moe_layout(ids[i : i + 1], e, moe_block_m(torch.float32))
        assert torch.equal(_grouped_triton(x[i : i + 1], w, one, True)[one.pair_row][0], y_all[i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combine_vs_reference_and_backward(dtype):
    t, k, n = 11, 3, 20
    lay = moe_layout(torch.stack([torch.randperm(5)[:k] for _ in range(t)]), 5, 4)
    rows = torch.randn(lay.num_rows, n).to(dtype).requires_grad_()
    wts = torch.rand(t, k).requires_grad_()
    out = kernels.moe_combine(rows, wts, lay.pair_row)
    rr, wr = rows.detach().float().requires_grad_(), wts.detach().clone().requires_grad_()
    ref = (rr[lay.pair_row] * wr[..., None]).sum(1)
    atol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=atol)
    g = torch.randn(t, n)
    out.backward(g.to(dtype))
    ref.backward(g)
    torch.testing.assert_close(rows.grad.float(), rr.grad, atol=atol, rtol=atol)
    torch.testing.assert_close(wts.grad, wr.grad, atol=atol * 10, rtol=atol)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="kernels.moe_route: top_k"):
        moe_route(torch.randn(2, 4), 5, True)
    with pytest.raises(ValueError, match="kernels.grouped_linear: x must be"):
        grouped_linear(torch.randn(3, 8), torch.randn(2, 4, 6), moe_layout(torch.zeros(3, 1, dtype=torch.int64), 2, 4),
                       True)
    with pytest.raises(ValueError, match="kernels.moe_layout: ids"):
        moe_layout(torch.zeros(3, 1, dtype=torch.int32), 2, 4)


def test_combine_triton_interpreter_matches_torch_path_and_is_row_invariant():
    from onpolicy.kernels.moe_combine import _combine_triton, sum_pairs

    t, k, n = 9, 3, 1100  # two column blocks, the second ragged
    lay = moe_layout(torch.stack([torch.randperm(6)[:k] for _ in range(t)]), 6, 4)
    rows, wts = torch.randn(lay.num_rows, n), torch.rand(t, k)
    out = _combine_triton(rows, wts, lay.pair_row)
    torch.testing.assert_close(out, sum_pairs(rows, lay.pair_row, wts), atol=1e-6, rtol=1e-6)
    assert torch.equal(_combine_triton(rows, wts[4:5], lay.pair_row[4:5])[0], out[4])


def test_bench_moe_quick_writes_json(tmp_path):
    import json

    from scripts import bench_moe

    rows = bench_moe.main(["--quick", "--tokens", "1,3", "--reps", "1", "--out", str(tmp_path)])
    assert [r["tokens"] for r in rows] == [1, 3] and all(r["invariant"] for r in rows)
    saved = json.loads((tmp_path / "moe.json").read_text())
    assert saved["results"][0]["ours_ms"] > 0 and saved["meta"]["shape"]["num_experts"] == 16
