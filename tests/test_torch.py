"""refdcn.torch: the autograd function and the drop-in module, against torchvision.

The function must compute what ``torchvision.ops.deform_conv2d`` computes (forward and all
five gradients, float64 to FLOAT64_RTOL), pass ``torch.autograd.gradcheck`` on every CPU
backend, honour ``requires_grad`` per input, hand CPU memory to the backends without
copies, and train a small network step for step like torchvision's layer.
"""

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch bridge needs the 'torch' extra")
torchvision = pytest.importorskip("torchvision", reason="the peer tests need torchvision")

import refdcn  # noqa: E402
import refdcn.torch as rt  # noqa: E402
from refdcn import backends  # noqa: E402
from refdcn.testing import make_case  # noqa: E402
from refdcn.tolerances import FLOAT64_RTOL, relative_error  # noqa: E402

CPU_BACKENDS = [b for b in backends.available() if backends.capabilities(b).device == "cpu"]
FAST_CPU = [b for b in CPU_BACKENDS if not backends.capabilities(b).oracle]
NAMES = ("input", "offset", "weight", "bias", "mask")


def tensors(case, requires_grad=True):
    """The case's arrays as float64 tensors in the function's argument order."""
    out = {}
    for name in NAMES:
        a = getattr(case, name)
        out[name] = None if a is None else torch.tensor(a, requires_grad=requires_grad)
    return out


def grads_of(y, t, grad_output):
    present = [n for n in NAMES if t[n] is not None and t[n].requires_grad]
    g = torch.autograd.grad(y, [t[n] for n in present], grad_output)
    return dict(zip(present, g))


def test_importing_refdcn_does_not_import_torch():
    code = ("import sys, numpy as np, refdcn, refdcn.nn, refdcn.verify\n"
            "refdcn.deform_conv2d(np.ones((1,1,3,3)), np.zeros((1,2,3,3)), np.ones((1,1,1,1)))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# a case with non-square kernel, groups and offset groups, padding on one axis only;
# gridsafe offsets keep every sample >= 0.1 away from a grid line, so the finite
# differences of gradcheck (step 1e-6) never cross a kink of bilinear interpolation
GRADCHECK_CASE = dict(batch=1, in_channels=4, out_channels=2, height=3, width=4, kernel=(2, 3),
                      padding=(1, 0), groups=2, offset_groups=2, offsets="gridsafe",
                      offset_scale=1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("modulated", [True, False], ids=["dcnv2", "dcnv1"])
def test_gradcheck(backend, modulated):
    case = make_case(seed=3, modulated=modulated, **GRADCHECK_CASE)
    t = tensors(case)
    inputs = tuple(t[n] for n in NAMES)

    def f(input, offset, weight, bias, mask):
        return rt.deform_conv2d(input, offset, weight, bias, case.stride, case.padding,
                                case.dilation, mask, backend=backend)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def peer_case(kind, seed):
    """Zero offsets with padding (border taps exactly on -1), integer landings, random."""
    offsets, scale = {"zero": ("zero", 1), "integer": ("integer", 2),
                      "random": ("random", 1.5)}[kind]
    return make_case(seed=seed, batch=2, in_channels=6, out_channels=4, height=5, width=4,
                     kernel=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1), groups=2,
                     offset_groups=3, offsets=offsets, offset_scale=scale)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["zero", "integer", "random"])
def test_agrees_with_torchvision(backend, kind):
    """Forward and all five gradients of torchvision's op, float64, torchvision convention."""
    case = peer_case(kind, seed=11)
    t = tensors(case)
    args = dict(stride=case.stride, padding=case.padding, dilation=case.dilation)
    ours = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                            backend=backend, **args)
    theirs = torchvision.ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"],
                                           mask=t["mask"], **args)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert relative_error(ours.detach().numpy(), theirs.detach().numpy()) <= FLOAT64_RTOL
    go = torch.tensor(case.grad_output)
    g_ours, g_theirs = grads_of(ours, t, go), grads_of(theirs, t, go)
    for name in NAMES:
        err = relative_error(g_ours[name].numpy(), g_theirs[name].numpy())
        assert err <= FLOAT64_RTOL, (name, err)


@pytest.mark.parametrize("backend", FAST_CPU)
def test_mmcv_convention_is_passed_through(backend):
    """convention='mmcv' gives refdcn's mmcv gradients, which differ where taps land on -1."""
    case = peer_case("zero", seed=5)
    t = tensors(case)
    args = (case.stride, case.padding, case.dilation)
    go = torch.tensor(case.grad_output)
    mm = grads_of(rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], *args,
                                   t["mask"], backend=backend, convention="mmcv"), t, go)
    tv = grads_of(rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], *args,
                                   t["mask"], backend=backend), t, go)
    expected = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend,
                                             convention="mmcv")
    for name in NAMES:
        np.testing.assert_array_equal(mm[name].numpy(), getattr(expected, name))
    assert not torch.equal(mm["offset"], tv["offset"])        # the -1 landings differ
    for name in ("input", "weight", "bias", "mask"):           # nothing else does
        assert torch.equal(mm[name], tv[name])


@pytest.mark.parametrize("needed", [c for r in range(1, 6)
                                    for c in itertools.combinations(NAMES, r)],
                         ids=lambda c: "+".join(c))
def test_requires_grad_combinations(needed):
    """Only the inputs that require grad get one, and it equals the all-inputs gradient."""
    case = peer_case("random", seed=2)
    full = tensors(case)
    go = torch.tensor(case.grad_output)
    y = rt.deform_conv2d(full["input"], full["offset"], full["weight"], full["bias"],
                         case.stride, case.padding, case.dilation, full["mask"])
    reference = grads_of(y, full, go)
    t = tensors(case, requires_grad=False)
    for name in needed:
        t[name].requires_grad_(True)
    y = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                         case.padding, case.dilation, t["mask"])
    assert y.requires_grad
    y.backward(go)
    for name in NAMES:
        if name in needed:
            torch.testing.assert_close(t[name].grad, reference[name], rtol=0, atol=0)
        else:
            assert t[name].grad is None


def test_no_input_requires_grad():
    case = peer_case("random", seed=2)
    t = tensors(case, requires_grad=False)
    y = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                         case.padding, case.dilation, t["mask"])
    assert not y.requires_grad and y.grad_fn is None


def test_cpu_tensors_travel_without_copies(monkeypatch):
    """The backend reads the tensors' memory, and the output tensor is the backend's array."""
    case = peer_case("random", seed=4).astype(np.float32)
    t = {n: torch.from_numpy(getattr(case, n)) for n in NAMES}
    seen = {}
    original = refdcn.api.deform_conv2d

    def spy(input, offset, weight, bias, stride, padding, dilation, mask, *, backend):
        out = original(input, offset, weight, bias, stride, padding, dilation, mask,
                       backend=backend)
        seen.update(input=input, offset=offset, weight=weight, bias=bias, mask=mask, out=out)
        return out

    monkeypatch.setattr(refdcn.api, "deform_conv2d", spy)
    y = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                         case.padding, case.dilation, t["mask"])
    for name in NAMES:
        assert np.shares_memory(seen[name], getattr(case, name)), name
    assert y.data_ptr() == seen["out"].ctypes.data


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_result_and_gradients_keep_the_dtype(dtype):
    case = peer_case("random", seed=6)
    t = {n: torch.tensor(getattr(case, n), dtype=dtype, requires_grad=True) for n in NAMES}
    y = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                         case.padding, case.dilation, t["mask"])
    assert y.dtype == dtype
    y.backward(torch.ones_like(y))
    assert all(t[n].grad.dtype == dtype for n in NAMES)
    if dtype == torch.float32:     # computed in float32 from float32 data
        expected = refdcn.deform_conv2d(*case.astype(np.float32).args())
        np.testing.assert_array_equal(y.detach().numpy(), expected)


def test_errors_name_the_argument():
    case = peer_case("random", seed=1)
    t = tensors(case, requires_grad=False)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        rt.deform_conv2d(case.input, t["offset"], t["weight"])
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        rt.deform_conv2d(t["input"], t["offset"], case.weight)
    with pytest.raises(ValueError, match="convention"):
        rt.deform_conv2d(t["input"], t["offset"], t["weight"], convention="paddle")
    with pytest.raises(ValueError, match="offset"):
        rt.deform_conv2d(t["input"], t["offset"][:, :2], t["weight"])
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        rt.DeformConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        rt.DeformConv2d(4, 3, 3, groups=2)


def test_module_is_a_drop_in_for_torchvision():
    """Same constructor, defaults, parameter names, shapes and (seeded) initial values."""
    for kwargs in (dict(), dict(stride=2, padding=1, dilation=(1, 2), groups=2, bias=False)):
        torch.manual_seed(7)
        theirs = torchvision.ops.DeformConv2d(4, 6, (3, 2), **kwargs)
        torch.manual_seed(7)
        ours = rt.DeformConv2d(4, 6, (3, 2), **kwargs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
        for attr in ("stride", "padding", "dilation", "groups", "kernel_size"):
            assert tuple(np.atleast_1d(getattr(ours, attr))) == tuple(
                np.atleast_1d(getattr(theirs, attr))), attr
    default = rt.DeformConv2d(2, 2, 3)
    assert default.padding == (0, 0) and default.bias is not None


def test_module_forward_matches_torchvision_with_and_without_mask():
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(4, 6, 3, padding=1, groups=2).double()
    ours = rt.DeformConv2d(4, 6, 3, padding=1, groups=2).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    offset = torch.randn(2, 2 * 2 * 9, 5, 6, dtype=torch.float64)
    mask = torch.rand(2, 2 * 9, 5, 6, dtype=torch.float64)
    for m in (None, mask):
        a, b = ours(x, offset, m), theirs(x, offset, m)
        assert relative_error(a.detach().numpy(), b.detach().numpy()) <= FLOAT64_RTOL


class OffsetNet(torch.nn.Module):
    """A zero-initialised offset/mask predictor feeding a deformable layer, then a classifier."""

    def __init__(self, layer_type):
        super().__init__()
        self.offsets = torch.nn.Conv2d(2, 3 * 9, 3, padding=1)
        self.dcn = layer_type(2, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        z = self.offsets(x)
        y = torch.relu(self.dcn(x, z[:, :18], torch.sigmoid(z[:, 18:])))
        return self.head(y.mean(dim=(2, 3)))


def test_small_network_trains_like_torchvision():
    """Five SGD steps, float64: the same parameters as with torchvision's layer, and the loss falls."""
    torch.manual_seed(1)
    theirs = OffsetNet(torchvision.ops.DeformConv2d).double()
    ours = OffsetNet(rt.DeformConv2d).double()
    ours.load_state_dict(theirs.state_dict())
    for net in (ours, theirs):   # random offset predictor: taps land inside, in bands, outside
        torch.nn.init.normal_(net.offsets.weight, std=0.3)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 2, 7, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    losses = []
    for net in (ours, theirs):
        opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        history = []
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), labels)
            loss.backward()
            opt.step()
            history.append(loss.item())
        losses.append(history)
    assert losses[0][-1] < losses[0][0]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert relative_error(p.detach().numpy(), q.detach().numpy()) <= FLOAT64_RTOL, name


def test_torch_compile_breaks_the_graph_and_gives_the_same_result():
    case = peer_case("random", seed=8)
    t = tensors(case)

    def f(input, offset, weight, bias, mask):
        y = rt.deform_conv2d(torch.sin(input), offset, weight, bias, case.stride,
                             case.padding, case.dilation, mask)
        return (y * y).sum()

    explanation = torch._dynamo.explain(f)(*(t[n] for n in NAMES))
    assert explanation.graph_break_count == 1
    assert "torch.compiler.disable" in str(explanation.break_reasons[0].reason)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager")
    a, b = compiled(*(t[n] for n in NAMES)), f(*(t[n] for n in NAMES))
    assert torch.equal(a, b)
    for ga, gb in zip(torch.autograd.grad(a, [t[n] for n in NAMES]),
                      torch.autograd.grad(b, [t[n] for n in NAMES])):
        assert torch.equal(ga, gb)


def test_jit_trace_is_refused_rather_than_baking_in_a_constant():
    case = peer_case("random", seed=8)
    t = tensors(case, requires_grad=False)
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(lambda x, o, w: rt.deform_conv2d(x, o, w, padding=1),
                        (t["input"], t["offset"], t["weight"]))


@pytest.mark.skipif("cuda" not in backends.available(), reason="the cuda backend is not available")
def test_cuda_backend_through_the_bridge():
    """CPU tensors on the cuda backend (the simulator here): same numbers as the CPU backends."""
    case = make_case(seed=9, batch=1, in_channels=2, out_channels=2, height=3, width=3,
                     kernel=(2, 1), groups=1, offset_groups=2)
    t = tensors(case)
    y = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                         case.padding, case.dilation, t["mask"], backend="cuda")
    go = torch.tensor(case.grad_output)
    got = {"output": y.detach().numpy(), **{k: v.numpy() for k, v in grads_of(y, t, go).items()}}
    ref = refdcn.deform_conv2d(*case.args(), backend="reference")
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend="reference")
    assert relative_error(got["output"], ref) <= FLOAT64_RTOL
    for name in NAMES:
        assert relative_error(got[name], getattr(g, name)) <= FLOAT64_RTOL, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and CUDA torch")
def test_cuda_tensors_stay_on_the_device():
    case = peer_case("random", seed=10)
    t = {n: torch.tensor(getattr(case, n), device="cuda", requires_grad=True) for n in NAMES}
    y = rt.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                         case.padding, case.dilation, t["mask"])
    assert y.device.type == "cuda"
    theirs = torchvision.ops.deform_conv2d(*(t[n].detach().cpu() for n in NAMES[:4]),
                                           stride=case.stride, padding=case.padding,
                                           dilation=case.dilation, mask=t["mask"].detach().cpu())
    assert relative_error(y.detach().cpu().numpy(), theirs.numpy()) <= FLOAT64_RTOL
    y.backward(torch.tensor(case.grad_output, device="cuda"))
    assert all(t[n].grad.device.type == "cuda" for n in NAMES)
    with pytest.raises(ValueError, match="runs on the CPU"):
        rt.deform_conv2d(t["input"], t["offset"], t["weight"], backend="numpy")
