"""destseg_lib.viz: the figures draw what they are given and save PNGs; the array helpers convert
exactly."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from destseg_lib import viz  # noqa: E402
from destseg_lib.infer import Predictions  # noqa: E402


def test_to_hwc_reads_tensors_as_chw_and_arrays_as_hwc():
    chw = torch.rand(3, 4, 5)
    assert np.array_equal(viz.to_hwc(chw), chw.permute(1, 2, 0).numpy())
    hwc = np.random.default_rng(0).random((4, 5, 3))
    assert np.array_equal(viz.to_hwc(hwc), hwc)
    assert viz.to_hwc(np.full((2, 2, 3), 1.7)).max() == 1.0  # clipped to [0, 1]


def test_prediction_overlay_colours_tp_fp_fn_and_leaves_the_rest():
    img = np.full((1, 4, 3), 0.5, np.float32)
    pred = np.array([[True, True, False, False]])
    truth = np.array([[True, False, True, False]])
    out = viz.prediction_overlay(img, pred, truth, alpha=1.0)
    assert np.allclose(out[0, 0], (0.1, 0.9, 0.1)) and np.allclose(out[0, 1], (1.0, 0.1, 0.1))
    assert np.allclose(out[0, 2], (0.15, 0.35, 1.0)) and np.allclose(out[0, 3], 0.5)


def test_curves_figure_plots_the_roc_of_the_scores(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    masks = np.zeros((6, 8, 8), bool)
    masks[3:, 2:5, 2:5] = True
    maps = (rng.random((6, 8, 8)) * 0.5 + masks * 0.4).astype(np.float32)
    scores = maps.reshape(6, -1).max(1)
    preds = Predictions(maps, scores, maps * 0.9, scores * 0.9, masks, labels)
    fig = viz.plot_curves(preds, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    roc = fig.axes[0].lines[0]
    fpr, tpr, _ = roc_curve(labels, scores)
    assert np.allclose(roc.get_xdata(), fpr) and np.allclose(roc.get_ydata(), tpr)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes[:3]] == ["image ROC", "pixel precision-recall",
                                                                        "PRO up to FPR 0.3"]
    matplotlib.pyplot.close(fig)


def test_loss_figure_has_both_stages():
    history = [{"step": s, "stage": 1, "loss": 1.0 / (s + 1)} for s in range(5)]
    history += [{"step": s, "stage": 2, "loss": 0.5, "focal": 0.2, "l1": 0.3} for s in range(5, 9)]
    fig = viz.plot_losses(history)
    assert list(fig.axes[0].lines[0].get_xdata()) == [0, 1, 2, 3, 4]
    assert [line.get_label() for line in fig.axes[1].lines] == ["total (Eq. 7)", "focal (Eq. 5)", "L1 (Eq. 6)"]
    assert len(viz.figure_png(fig)) > 1000
    matplotlib.pyplot.close(fig)


def test_image_rows_take_titles_per_row():
    rows = {"a": [np.zeros((4, 4))] * 2, "b": [np.ones((4, 4))] * 2}
    fig = viz.plot_image_rows(rows, titles=[["t = 0", "t = 1"], ["0°", "30°"]])
    assert [ax.get_title() for ax in fig.axes] == ["t = 0", "t = 1", "0°", "30°"]
    fig = viz.plot_image_rows(rows, titles=["x", "y"])  # one list: the first row only
    assert [ax.get_title() for ax in fig.axes] == ["x", "y", "", ""]
    matplotlib.pyplot.close("all")
