"""``refdcn experiment scaled-mnist``: the seed experiment (DCN / DCNv2 on scaled MNIST).

Trains the five networks of the original comparison with :mod:`refdcn.nn`
on refdcn's fastest CPU backend and writes ``results.md``, ``results.csv``,
``history.csv`` and ``accuracy.png`` into ``--out``.
"""

import math
import os
import sys
import time

HELP = "train the seed experiment (plain conv vs DCN vs DCNv2 on scaled MNIST) and tabulate it"

EXPERIMENTS = ("scaled-mnist",)

#: ``--quick``: a CI-sized run (well under 2 minutes on 2 cores).
QUICK = dict(width=0.125, epochs=3, train_images=320, test_images=200)


def add_arguments(parser):
    from ..experiments import scaled_mnist as sm
    defaults = sm.Settings()
    parser.add_argument("experiment", choices=EXPERIMENTS, help="which experiment to run")
    parser.add_argument("--width", type=float, default=None, metavar="W",
                        help=f"channel multiplier, 1.0 = the original 32/64/128/256 "
                             f"(default {defaults.width:g}: all five runs in under 25 min on "
                             f"2 CPU cores; --quick: {QUICK['width']:g})")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help=f"training epochs (default {defaults.epochs}; "
                             f"--quick: {QUICK['epochs']})")
    parser.add_argument("--seed", default="0", metavar="S[,S...]",
                        help="random seed(s) of initialisation, scaling and batch order; "
                             "several (comma-separated) train every configuration once per seed "
                             "and the table reports mean and spread (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default results/scaled-mnist, "
                             "--quick: results/scaled-mnist-quick); runs already saved there with "
                             "the same settings (other seeds) are included in the table")
    parser.add_argument("--configs", default=",".join(sm.CONFIGS), metavar="LIST",
                        help="comma-separated configurations to train, from: "
                             + ", ".join(f"{k} ({c.label})" for k, c in sm.CONFIGS.items())
                             + " (default: all five)")
    parser.add_argument("--train-images", type=int, default=None, metavar="N",
                        help=f"use only N of the {defaults.train_images} training digits")
    parser.add_argument("--test-images", type=int, default=None, metavar="N",
                        help=f"use only N of the {defaults.test_images} test digits")
    parser.add_argument("--lr", type=float, default=None, metavar="LR",
                        help=f"base learning rate (default {defaults.lr:g}; the original: "
                             f"{sm.ORIGINAL_OPTIMISER['lr']:g})")
    parser.add_argument("--momentum", type=float, default=None, metavar="M",
                        help=f"SGD momentum (default {defaults.momentum:g}; the original: "
                             f"{sm.ORIGINAL_OPTIMISER['momentum']:g})")
    parser.add_argument("--schedule", choices=sm.SCHEDULES, default=None,
                        help=f"learning-rate schedule over the run (default {defaults.schedule}; "
                             f"the original: {sm.ORIGINAL_OPTIMISER['schedule']})")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI-sized run (width {QUICK['width']:g}, {QUICK['train_images']}/"
                             f"{QUICK['test_images']} digits, {QUICK['epochs']} epochs) that "
                             f"fails (exit 1) unless the training loss falls in every run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_list(text, name, convert):
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"{name} must not be empty")
    return [convert(t) for t in items]


def resolve(args):
    """(Settings, seeds, config keys, out folder) from the parsed arguments; UsageError if bad."""
    from ..cli import UsageError
    from ..experiments import scaled_mnist as sm
    base = sm.Settings()
    pick = lambda name: (getattr(args, name) if getattr(args, name) is not None
                         else QUICK.get(name, getattr(base, name)) if args.quick
                         else getattr(base, name))
    width, epochs = pick("width"), pick("epochs")
    train_images, test_images = pick("train_images"), pick("test_images")
    if not (width > 0 and width <= 4):
        raise UsageError(f"--width must be in (0, 4]; got {width:g}")
    if epochs < 1:
        raise UsageError(f"--epochs must be >= 1; got {epochs}")
    lr, momentum, schedule = pick("lr"), pick("momentum"), pick("schedule")
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"--lr must be a finite number > 0; got {lr:g}")
    if not 0 <= momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1); got {momentum:g}")
    if not 1 <= train_images <= base.train_images:
        raise UsageError(f"--train-images must be in [1, {base.train_images}]; got {train_images}")
    if not 1 <= test_images <= base.test_images:
        raise UsageError(f"--test-images must be in [1, {base.test_images}]; got {test_images}")
    try:
        seeds = _parse_list(args.seed, "--seed", int)
    except ValueError:
        raise UsageError(f"--seed must be a non-negative integer or a comma-separated list of "
                         f"them; got {args.seed!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seed must list distinct non-negative integers; got {args.seed!r}")
    try:
        configs = _parse_list(args.configs, "--configs", str)
    except ValueError:
        raise UsageError("--configs must name at least one configuration") from None
    unknown = [c for c in configs if c not in sm.CONFIGS]
    if unknown:
        raise UsageError(f"--configs: unknown configuration {unknown[0]!r}; "
                         f"expected a comma-separated list of {', '.join(sm.CONFIGS)}")
    out = args.out or ("results/scaled-mnist-quick" if args.quick else "results/scaled-mnist")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out must be a folder; {out!r} is a file")
    settings = sm.Settings(width=float(width), epochs=int(epochs), train_images=int(train_images),
                           test_images=int(test_images), lr=float(lr), momentum=float(momentum),
                           schedule=schedule)
    return settings, seeds, list(dict.fromkeys(configs)), out


def _loss_fell(result):
    """Mean training loss of the last epoch below the mean of the first batches."""
    import numpy as np
    return bool(result.train_loss[-1] < np.mean(result.first_losses))


def run(args):
    from ..cli import UsageError
    from .. import backends
    from ..experiments import scaled_mnist as sm
    from ..install_hints import require
    settings, seeds, configs, out = resolve(args)
    try:                                # every missing piece named before training starts
        sm.load_data()
        require("matplotlib", "experiment", "refdcn experiment (the accuracy plot)")
        if not args.no_progress:
            require("tqdm", "experiment", "refdcn experiment (progress bars; or --no-progress)")
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create folder {out!r}: {exc.strerror}") from None
    ch = "/".join(str(c) for c in sm.channels(settings.width))
    print(f"scaled MNIST: {len(configs)} configuration(s) x {len(seeds)} seed(s), width "
          f"{settings.width:g} (channels {ch}), {settings.epochs} epochs, "
          f"{settings.train_images}/{settings.test_images} train/test digits, SGD lr "
          f"{settings.lr:g} ({settings.schedule}) momentum {settings.momentum:g}, backend "
          f"{backends.fastest_cpu()}", flush=True)
    if not sm.comparable_with_original(settings):
        print(sm.NOT_COMPARABLE + (" --quick checks only that the training loss falls."
                                   if args.quick else ""), flush=True)
    status, t0 = 0, time.perf_counter()
    for seed in seeds:
        data = sm.ScaledMNIST(seed, settings.data_seed, settings.train_images,
                              settings.test_images)
        for key in configs:
            result = sm.train(sm.CONFIGS[key], settings, seed, data,
                              progress=not args.no_progress)
            sm.save_run(result, out)
            line = (f"{result.label:<14} seed {seed}: test accuracy {result.test_accuracy[-1]:.2f}%"
                    f", test loss {result.test_loss[-1]:.4f}, train loss "
                    f"{result.first_losses[0]:.3f} -> {result.train_loss[-1]:.3f}, "
                    f"{result.train_seconds:.0f} s, {result.parameters:,} parameters")
            if args.quick and not _loss_fell(result):
                line += "  FAIL: the training loss did not fall"
                status = 1
            print(line, flush=True)
    rows = sm.write_outputs(out, settings)
    print(f"\nall runs: {time.perf_counter() - t0:.0f} s; wrote {out}/results.md, results.csv, "
          f"history.csv, accuracy.png ({len(rows)} configurations)")
    with open(os.path.join(out, "results.md")) as f:
        sys.stdout.write(f.read())
    if args.quick:
        print("quick check:", "the training loss fell in every run" if status == 0
              else "FAILED (the training loss did not fall)")
    return status
