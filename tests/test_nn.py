"""refdcn.nn: every layer's hand-written backward against finite differences, BatchNorm
modes, the SGD update rule, and one training step of a whole network against PyTorch."""

import numpy as np
import pytest

from refdcn import nn
from refdcn.testing import numerical_gradient
from refdcn.tolerances import FLOAT64_RTOL, relative_error

# Central differences (eps = 1e-6) in float64.  For layers that are piecewise polynomial of
# degree <= 2 in each single variable (convolutions, pooling, ReLU, Linear) the truncation
# error is 0 and only rounding remains, ~1e-16 * |sum(f * g)| / 1e-6 ~ 1e-10 relative; for the
# smooth nonlinear ones (BatchNorm, softmax, sigmoid) the truncation error eps^2 |f'''| / 6 adds
# ~1e-12.  A wrong backward (a missing term, a wrong axis or sign) is off by 1e-2 or more.
FD_RTOL = 1e-8
F64 = np.float64


def check_gradients(layer, x, rng, params=None, skip_input=False):
    """Finite differences of sum(layer(x) * g) w.r.t. x and every parameter, g random."""
    y = layer.forward(x)
    g = rng.normal(size=y.shape)
    layer.zero_grad()
    grad_x = layer.backward(g)
    f = lambda: layer.forward(x)
    if not skip_input:
        err = relative_error(grad_x, numerical_gradient(f, x, g))
        assert err < FD_RTOL, f"input: {err:.2e}"
    for p in (layer.parameters() if params is None else params):
        err = relative_error(p.grad, numerical_gradient(f, p.data, g))
        assert err < FD_RTOL, f"{p.name}: {err:.2e}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- convolutions -------------------------------------------------------------------------------

@pytest.mark.parametrize("stride,padding,bias",
                         [(1, 1, False), (2, 0, True), ((1, 2), (2, 1), True)])
def test_conv2d_gradients(rng, stride, padding, bias):
    conv = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, bias=bias, rng=rng, dtype=F64)
    check_gradients(conv, rng.normal(size=(2, 3, 6, 5)), rng)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), ((1, 2), (2, 1))])
def test_conv2d_is_deform_conv2d_with_zero_offsets(rng, stride, padding):
    """The regular-grid im2col computes refdcn.deform_conv2d with all offsets zero."""
    grid = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, bias=True, rng=rng, dtype=F64)
    deform = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, bias=True, dtype=F64,
                       method="deformable")
    deform.weight.data[...] = grid.weight.data
    deform.bias.data[...] = grid.bias.data
    x = rng.normal(size=(2, 3, 6, 5))
    y = grid.forward(x)
    assert relative_error(y, deform.forward(x)) <= FLOAT64_RTOL
    g = rng.normal(size=y.shape)
    gx_grid, gx_deform = grid.backward(g), deform.backward(g)
    assert relative_error(gx_grid, gx_deform) <= FLOAT64_RTOL
    assert relative_error(grid.weight.grad, deform.weight.grad) <= FLOAT64_RTOL
    assert relative_error(grid.bias.grad, deform.bias.grad) <= FLOAT64_RTOL


def test_conv2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        nn.Conv2d(1, 1, method="fft")
    with pytest.raises(ValueError, match="init"):
        nn.Conv2d(1, 1, init="ones")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        nn.Conv2d(3, 1, dtype=F64).forward(np.zeros((1, 2, 4, 4)))


def _offgrid_deform(rng, modulation):
    """A DeformConv2d with a non-zero offset predictor whose sampling points all lie at least
    0.05 from a grid line (so finite differences never cross a kink of bilinear sampling):
    offsets = integer + 0.5 + a small input-dependent part."""
    kind = nn.ModulatedDeformConv2dPack if modulation else nn.DeformConv2dPack
    layer = kind(2, 3, 3, padding=1, bias=True, rng=rng, dtype=F64)
    conv = layer.conv_offset
    conv.weight.data[...] = rng.normal(scale=0.02, size=conv.weight.data.shape)
    conv.bias.data[...] = rng.normal(size=conv.bias.data.shape)   # mask logits
    conv.bias.data[:18] = rng.integers(-2, 3, size=18) + 0.5
    x = rng.normal(size=(2, 2, 5, 4))
    offset = conv.forward(x)[:, :18]
    frac = offset - np.floor(offset)   # integer grid + integer taps: off-grid iff frac is
    assert np.min(np.minimum(frac, 1 - frac)) > 0.05
    assert np.ptp(offset - conv.bias.data[:18, None, None]) > 0.1   # the input moves them
    return layer, x


@pytest.mark.parametrize("modulation", [False, True], ids=["DCNv1", "DCNv2"])
def test_deform_conv2d_gradients(rng, modulation):
    layer, x = _offgrid_deform(rng, modulation)
    names = {p.name for p in layer.parameters()}
    assert names == {"dcn.weight", "dcn.bias", "dcn.conv_offset.weight", "dcn.conv_offset.bias"}
    check_gradients(layer, x, rng)


@pytest.mark.parametrize("modulation", [False, True], ids=["DCNv1", "DCNv2"])
def test_deform_conv2d_starts_as_plain_convolution(rng, modulation):
    """Zero-initialised offset/mask predictor: offsets 0 and mask 0.5, lr multiplier 0.1."""
    kind = nn.ModulatedDeformConv2dPack if modulation else nn.DeformConv2dPack
    layer = kind(3, 4, 3, padding=1, bias=False, offset_lr_mult=0.1, rng=rng, dtype=F64)
    assert layer.conv_offset.weight.data.shape == (27 if modulation else 18, 3, 3, 3)
    for p in layer.conv_offset.parameters():
        assert np.all(p.data == 0) and p.lr_mult == 0.1
    assert layer.weight.lr_mult == 1.0 and layer.bias is None
    x = rng.normal(size=(2, 3, 5, 6))
    plain = nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=F64)
    plain.weight.data[...] = layer.weight.data
    expected = plain.forward(x) * (0.5 if modulation else 1.0)
    assert relative_error(layer.forward(x), expected) <= FLOAT64_RTOL


# --- the other layers ---------------------------------------------------------------------------

def test_batchnorm_train_gradients(rng):
    bn = nn.BatchNorm2d(3, dtype=F64)
    bn.weight.data[...] = rng.normal(size=3)
    bn.bias.data[...] = rng.normal(size=3)
    check_gradients(bn, rng.normal(loc=2.0, scale=3.0, size=(4, 3, 3, 2)), rng)


def test_batchnorm_eval_gradients(rng):
    bn = nn.BatchNorm2d(3, dtype=F64).eval()
    bn.running_mean[...] = rng.normal(size=3)
    bn.running_var[...] = rng.uniform(0.5, 2.0, size=3)
    bn.weight.data[...] = rng.normal(size=3)
    check_gradients(bn, rng.normal(size=(2, 3, 3, 2)), rng)


def test_batchnorm_modes(rng):
    bn = nn.BatchNorm2d(2, dtype=F64)
    bn.weight.data[...] = [2.0, 3.0]
    bn.bias.data[...] = [-1.0, 0.5]
    x = rng.normal(loc=[[[4.0]], [[-2.0]]], scale=[[[2.0]], [[0.5]]], size=(5, 2, 3, 3))
    y = bn.forward(x)
    # training: batch statistics, normalised per channel
    assert np.allclose(y.mean(axis=(0, 2, 3)), [-1.0, 0.5], atol=1e-12)
    assert np.allclose(y.std(axis=(0, 2, 3)), [2.0, 3.0], rtol=1e-4)   # eps = 1e-5 in var
    # running statistics: momentum 0.1 towards the mean and the unbiased variance
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
    assert np.allclose(bn.running_mean, 0.1 * mean, rtol=1e-12)
    assert np.allclose(bn.running_var, 0.9 + 0.1 * var, rtol=1e-12)
    # evaluation: the running statistics, independent of the batch
    bn.eval()
    y1 = bn.forward(x[:1])
    expected = ((x[:1] - bn.running_mean[:, None, None])
                / np.sqrt(bn.running_var[:, None, None] + 1e-5)
                * bn.weight.data[:, None, None] + bn.bias.data[:, None, None])
    assert relative_error(y1, expected) <= FLOAT64_RTOL
    assert relative_error(bn.forward(x)[:1], y1) <= FLOAT64_RTOL
    before = bn.running_mean.copy()
    bn.forward(x + 5)
    assert np.array_equal(bn.running_mean, before)


def test_relu_gradients(rng):
    x = rng.normal(size=(2, 3, 4, 4))
    x[np.abs(x) < 1e-3] = 0.5               # no point within a step of the kink
    check_gradients(nn.ReLU(), x, rng)


@pytest.mark.parametrize("shape", [(2, 3, 6, 4), (1, 2, 5, 7)])
def test_maxpool_gradients(rng, shape):
    x = rng.permutation(np.arange(np.prod(shape), dtype=F64)).reshape(shape) * 0.01  # no ties
    pool = nn.MaxPool2d(2)
    y = pool.forward(x)
    assert y.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    assert y[0, 0, 0, 0] == x[0, 0, :2, :2].max()
    check_gradients(pool, x, rng)


def test_global_average_pool_gradients(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    assert np.allclose(nn.GlobalAvgPool2d().forward(x), x.mean(axis=(2, 3)))
    check_gradients(nn.GlobalAvgPool2d(), x, rng)


def test_linear_gradients(rng):
    check_gradients(nn.Linear(5, 3, rng=rng, dtype=F64), rng.normal(size=(4, 5)), rng)


def test_softmax_cross_entropy(rng):
    logits = rng.normal(size=(5, 4)) * 3
    labels = rng.integers(0, 4, size=5)
    loss_fn = nn.SoftmaxCrossEntropy()
    loss = loss_fn(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert relative_error(loss, -np.mean(np.log(p[np.arange(5), labels]))) <= FLOAT64_RTOL
    upstream = 1.7
    grad = loss_fn.backward(upstream)
    numeric = numerical_gradient(lambda: loss_fn(logits, labels), logits, upstream)
    assert relative_error(grad, numeric) < FD_RTOL
    with pytest.raises(ValueError, match="labels"):
        loss_fn(logits, np.array([0, 1, 2, 3, 4]))


def test_whole_network_gradients(rng):
    """A small network through Sequential: conv, DCNv2, BN, ReLU, pool, GAP, Linear, loss."""
    from refdcn.experiments.scaled_mnist import CONFIGS, build_network
    net = build_network(CONFIGS["dcnv2-34"], width=1 / 16, rng=rng, dtype=F64)
    x = rng.normal(size=(2, 1, 8, 8))
    labels = np.array([3, 7])
    loss_fn = nn.SoftmaxCrossEntropy()
    # move the offsets off the grid, so finite differences do not cross kinks
    for layer in net:
        if isinstance(layer, nn.DeformConv2dPack):
            layer.conv_offset.bias.data[:18] = 0.37
    net.zero_grad()
    loss_fn(net.forward(x), labels)
    net.backward(loss_fn.backward())
    f = lambda: loss_fn(net.forward(x), labels)
    for p in net.parameters():
        # the small parameters at both ends and of both offset/mask predictors
        # (every element costs two forwards; the torch test below checks all of them)
        if p.name in ("conv1.weight", "bn2.weight", "conv3.conv_offset.bias",
                      "conv4.conv_offset.bias", "fc.bias"):
            err = relative_error(p.grad, numerical_gradient(f, p.data, 1.0))
            assert err < FD_RTOL, f"{p.name}: {err:.2e}"


# --- the optimiser ------------------------------------------------------------------------------

def test_sgd_update_rule():
    """Two steps of SGD with momentum, weight decay and a 0.1 lr multiplier, by hand."""
    a = nn.Parameter(np.array([1.0, -2.0]), "a")
    b = nn.Parameter(np.array([0.5]), "b", lr_mult=0.1)
    opt = nn.SGD([a, b], lr=0.1, momentum=0.5, weight_decay=0.01)
    assert sorted(g["lr_mult"] for g in opt.groups) == [0.1, 1.0]
    grads = [(np.array([0.2, 0.4]), np.array([1.0])), (np.array([-0.6, 0.0]), np.array([2.0]))]
    # by hand: g = grad + 0.01 p; buf = 0.5 buf + g (buf = g first); p -= lr * mult * buf
    pa, pb = np.array([1.0, -2.0]), np.array([0.5])
    ga1, gb1 = grads[0][0] + 0.01 * pa, grads[0][1] + 0.01 * pb
    pa1, pb1 = pa - 0.1 * ga1, pb - 0.01 * gb1
    ga2, gb2 = grads[1][0] + 0.01 * pa1, grads[1][1] + 0.01 * pb1
    pa2, pb2 = pa1 - 0.1 * (0.5 * ga1 + ga2), pb1 - 0.01 * (0.5 * gb1 + gb2)
    for (da, db), (ea, eb) in zip(grads, [(pa1, pb1), (pa2, pb2)]):
        opt.zero_grad()
        a.grad += da
        b.grad += db
        opt.step()
        assert relative_error(a.data, ea) <= FLOAT64_RTOL
        assert relative_error(b.data, eb) <= FLOAT64_RTOL


def test_sgd_explicit_groups_and_errors():
    a = nn.Parameter(np.array([1.0]), "a")
    opt = nn.SGD([{"params": [a], "lr_mult": 2.0, "weight_decay": 0.0}], lr=0.1, momentum=0.9,
                 weight_decay=1.0)
    a.grad[...] = 1.0
    opt.step()
    assert a.data[0] == pytest.approx(1.0 - 0.2, rel=1e-15)
    with pytest.raises(ValueError, match="lr"):
        nn.SGD([a], lr=0)
    with pytest.raises(ValueError, match="momentum"):
        nn.SGD([a], lr=0.1, momentum=1.0)
    with pytest.raises(TypeError, match="params"):
        nn.SGD([{"lr_mult": 1.0}], lr=0.1)


# --- one training step against PyTorch ----------------------------------------------------------

def test_training_step_matches_pytorch(rng):
    """Loss, every gradient and the SGD update of a DCNv2@conv3~4 network equal PyTorch's."""
    torch = pytest.importorskip("torch")
    tvops = pytest.importorskip("torchvision.ops")
    from refdcn.experiments.scaled_mnist import CONFIGS, build_network
    net = build_network(CONFIGS["dcnv2-34"], width=1 / 16, rng=rng, dtype=F64)
    for layer in net:   # non-zero offsets and masks, so that their paths matter
        if isinstance(layer, nn.DeformConv2dPack):
            for p in layer.conv_offset.parameters():
                p.data[...] = rng.normal(scale=0.3, size=p.data.shape)
    x = rng.normal(size=(3, 1, 12, 12))
    labels = np.array([1, 4, 9])
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = nn.SGD(net.parameters(), lr=0.01, momentum=0.5, weight_decay=1e-4)
    tparams = {p.name: torch.tensor(p.data.copy(), requires_grad=True) for p in net.parameters()}

    def torch_forward(t):
        for layer in net:
            if isinstance(layer, nn.DeformConv2dPack):
                name = layer.weight.name.split(".")[0]
                z = torch.nn.functional.conv2d(t, tparams[f"{name}.conv_offset.weight"],
                                               tparams[f"{name}.conv_offset.bias"], padding=1)
                t = tvops.deform_conv2d(t, z[:, :18], tparams[f"{name}.weight"], padding=1,
                                        mask=torch.sigmoid(z[:, 18:]))
            elif isinstance(layer, nn.Conv2d):
                t = torch.nn.functional.conv2d(t, tparams[layer.weight.name], padding=1)
            elif isinstance(layer, nn.BatchNorm2d):
                t = torch.nn.functional.batch_norm(t, None, None, tparams[layer.weight.name],
                                                   tparams[layer.bias.name], training=True)
            elif isinstance(layer, nn.ReLU):
                t = torch.relu(t)
            elif isinstance(layer, nn.MaxPool2d):
                t = torch.nn.functional.max_pool2d(t, 2)
            elif isinstance(layer, nn.GlobalAvgPool2d):
                t = t.mean(dim=(2, 3))
            else:
                t = torch.nn.functional.linear(t, tparams["fc.weight"], tparams["fc.bias"])
        return t

    tx = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(torch_forward(tx), torch.tensor(labels))
    tloss.backward()
    groups = [{"params": [t for n, t in tparams.items() if ("conv_offset" in n) == slow],
               "lr": 0.001 if slow else 0.01} for slow in (False, True)]
    topt = torch.optim.SGD(groups, lr=0.01, momentum=0.5, weight_decay=1e-4)
    topt.step()

    opt.zero_grad()
    loss = loss_fn(net.forward(x), labels)
    grad_x = net.backward(loss_fn.backward())
    # float64 on both sides, different summation orders through ~10 layers
    assert relative_error(loss, tloss.item()) <= FLOAT64_RTOL
    assert relative_error(grad_x, tx.grad.numpy()) <= FLOAT64_RTOL
    for p in net.parameters():
        assert relative_error(p.grad, tparams[p.name].grad.numpy()) <= FLOAT64_RTOL, p.name
    opt.step()
    for p in net.parameters():
        assert relative_error(p.data, tparams[p.name].detach().numpy()) <= FLOAT64_RTOL, p.name


# --- torchvision's contract and mmcv's defaults ---------------------------------------------------

def test_deform_conv2d_follows_torchvision():
    """Offsets and mask passed to forward; padding 0 and a bias by default; same numbers and
    five gradients as torchvision.ops.DeformConv2d with the same parameters."""
    torch = pytest.importorskip("torch")
    tvops = pytest.importorskip("torchvision.ops")
    layer = nn.DeformConv2d(4, 6, (3, 2), dilation=(1, 2), groups=2, dtype=F64,
                            rng=np.random.default_rng(0))
    assert layer.padding == (0, 0) and layer.stride == (1, 1) and layer.bias is not None
    theirs = tvops.DeformConv2d(4, 6, (3, 2), dilation=(1, 2), groups=2).double()
    assert theirs.weight.shape == layer.weight.data.shape
    theirs.weight.data = torch.tensor(layer.weight.data)
    theirs.bias.data = torch.tensor(layer.bias.data)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 6, 7))
    offset = rng.normal(size=(2, 2 * 2 * 6, 4, 5))
    mask = rng.uniform(size=(2, 2 * 6, 4, 5))
    for m in (None, mask):
        y = layer(x, offset, m)
        t = [torch.tensor(a, requires_grad=True) for a in (x, offset)]
        tm = None if m is None else torch.tensor(m, requires_grad=True)
        ty = theirs(*t, tm)
        assert relative_error(y, ty.detach().numpy()) <= FLOAT64_RTOL
        g = rng.normal(size=y.shape)
        layer.zero_grad()
        gx, goff, gmask = layer.backward(g)
        ty.backward(torch.tensor(g))
        assert relative_error(gx, t[0].grad.numpy()) <= FLOAT64_RTOL
        assert relative_error(goff, t[1].grad.numpy()) <= FLOAT64_RTOL
        assert (gmask is None) == (m is None)
        if m is not None:
            assert relative_error(gmask, tm.grad.numpy()) <= FLOAT64_RTOL
        assert relative_error(layer.weight.grad, theirs.weight.grad.numpy()) <= FLOAT64_RTOL
        assert relative_error(layer.bias.grad, theirs.bias.grad.numpy()) <= FLOAT64_RTOL
        theirs.zero_grad()
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.DeformConv2d(3, 6, 3, groups=2)


def test_pack_layers_have_mmcv_defaults():
    """mmcv: DeformConv2dPack bias=False, weight U(+-sqrt(6/fan_in)); Modulated: bias=True and
    0, weight U(+-1/sqrt(C_in*k*k)); padding 0; conv_offset zero with 2K / 3K channels."""
    rng = np.random.default_rng(0)
    v1 = nn.DeformConv2dPack(8, 16, 3, deform_groups=2, rng=rng, dtype=F64)
    v2 = nn.ModulatedDeformConv2dPack(8, 16, 3, deform_groups=2, rng=rng, dtype=F64)
    assert v1.bias is None and v2.bias is not None and np.all(v2.bias.data == 0)
    assert v1.conv.padding == v2.conv.padding == (0, 0)
    assert v1.conv_offset.weight.data.shape == (2 * 2 * 9, 8, 3, 3)
    assert v2.conv_offset.weight.data.shape == (3 * 2 * 9, 8, 3, 3)
    assert all(np.all(p.data == 0) and p.lr_mult == 1.0
               for layer in (v1, v2) for p in layer.conv_offset.parameters())
    # the bounds of the uniform draws (2304 values each: the extremes come within 1 %)
    for layer, bound in ((v1, np.sqrt(6 / 72)), (v2, 1 / np.sqrt(72))):
        w = layer.weight.data
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    x = rng.normal(size=(2, 8, 5, 5))
    plain = nn.Conv2d(8, 16, 3, bias=False, dtype=F64)
    plain.weight.data[...] = v2.weight.data
    assert relative_error(v2.forward(x), 0.5 * plain.forward(x)) <= FLOAT64_RTOL
    with pytest.raises(ValueError, match="init"):
        nn.DeformConv2dPack(2, 2, 3, init="xavier")


def test_pack_layers_with_deform_groups_and_dilation_gradients(rng):
    """Offset groups (mmcv's deform_groups), dilation and stride through both paths."""
    layer = nn.ModulatedDeformConv2dPack(4, 2, (2, 3), stride=(1, 2), padding=(1, 2),
                                         dilation=(2, 1), deform_groups=2, rng=rng, dtype=F64)
    conv = layer.conv_offset
    conv.weight.data[...] = rng.normal(scale=0.01, size=conv.weight.data.shape)
    conv.bias.data[...] = rng.integers(-2, 3, size=conv.bias.data.shape) + 0.5
    check_gradients(layer, rng.normal(size=(2, 4, 5, 6)), rng)


# --- empty batches, labels, NaN (issue 12 item 4) -------------------------------------------------

def _layers(dtype=F64):
    rng = np.random.default_rng(5)
    return [nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=dtype),
            nn.DeformConv2dPack(2, 3, 3, padding=1, rng=rng, dtype=dtype),
            nn.ModulatedDeformConv2dPack(2, 3, 3, padding=1, rng=rng, dtype=dtype),
            nn.BatchNorm2d(2, dtype=dtype), nn.BatchNorm2d(2, dtype=dtype).eval(), nn.ReLU(),
            nn.MaxPool2d(2), nn.GlobalAvgPool2d()]


@pytest.mark.parametrize("index", range(8))
def test_empty_batch_through_every_layer(index):
    """N = 0: empty outputs and input gradients of the right shape, zero parameter gradients,
    running statistics unchanged (PyTorch's behaviour)."""
    layer = _layers()[index]
    x = np.zeros((0, 2, 4, 4))
    stats = [s.copy() for s in (getattr(layer, "running_mean", None),
                                getattr(layer, "running_var", None)) if s is not None]
    y = layer.forward(x)
    assert y.shape[0] == 0
    layer.zero_grad()
    grad = layer.backward(np.zeros(y.shape))
    assert grad.shape == x.shape
    assert all(np.all(p.grad == 0) for p in layer.parameters())
    for before, now in zip(stats, (getattr(layer, "running_mean", None),
                                   getattr(layer, "running_var", None))):
        np.testing.assert_array_equal(before, now)


def test_empty_batch_deform_conv2d_and_linear():
    layer = nn.DeformConv2d(2, 3, 3, dtype=F64)
    y = layer(np.zeros((0, 2, 4, 4)), np.zeros((0, 18, 2, 2)), np.zeros((0, 9, 2, 2)))
    gx, goff, gmask = layer.backward(np.zeros(y.shape))
    assert (gx.shape, goff.shape, gmask.shape) == ((0, 2, 4, 4), (0, 18, 2, 2), (0, 9, 2, 2))
    fc = nn.Linear(3, 2, dtype=F64)
    assert fc.backward(fc.forward(np.zeros((0, 3)))[:, :]).shape == (0, 3)
    loss = nn.SoftmaxCrossEntropy()
    assert np.isnan(loss(np.zeros((0, 4)), np.zeros(0, int)))       # PyTorch: NaN
    assert loss.backward().shape == (0, 4)


def test_batchnorm_empty_batch_keeps_later_evaluation_finite():
    bn = nn.BatchNorm2d(2, dtype=F64)
    bn.forward(np.zeros((0, 2, 3, 3)))
    bn.eval()
    assert np.all(np.isfinite(bn.forward(np.ones((1, 2, 3, 3)))))


@pytest.mark.parametrize("labels,error,match", [
    (np.array([0.0, 1.0]), TypeError, "labels must be integer class indices.*float64"),
    (np.array([True, False]), TypeError, "labels must be integer class indices.*bool"),
    (np.array(["0", "1"]), TypeError, "labels must be integer class indices"),
    (np.array([np.nan, 1.0]), TypeError, "labels.*NaN"),
    (np.array([0, 4]), ValueError, r"labels must lie in \[0, 4\)"),
    (np.array([-1, 0]), ValueError, r"labels must lie in \[0, 4\)"),
    (np.array([0, 1, 2]), ValueError, "labels"),
])
def test_labels_are_validated(labels, error, match):
    with pytest.raises(error, match=match):
        nn.SoftmaxCrossEntropy()(np.zeros((2, 4)), labels)


def test_relu_propagates_nan_as_pytorch():
    torch = pytest.importorskip("torch")
    x = np.array([np.nan, -1.0, 0.0, 2.0, -np.inf, np.inf])
    relu = nn.ReLU()
    y = relu.forward(x)
    g = relu.backward(np.ones_like(x))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.ones_like(ty))
    np.testing.assert_array_equal(y, ty.detach().numpy())          # NaN stays NaN
    np.testing.assert_array_equal(g, tx.grad.numpy())


def test_sgd_rejects_non_finite_learning_rates():
    a = nn.Parameter(np.array([1.0]), "a")
    for lr in (np.inf, np.nan, 0.0, -0.1):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            nn.SGD([a], lr=lr)
