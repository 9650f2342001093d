"""Every algorithm in a plot gets its own (colour, line style), however many there are, and the
same algorithm keeps the same style in every panel and every file of a run."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from sasg.report.plots import STYLE, Y_AXES, _figure, plot_curves, style_for, styles_for  # noqa: E402


def pair(style: dict):
    return to_hex(style["color"]), str(style["linestyle"])


def line_key(line):
    """What a reader sees: colour and dash pattern (``get_linestyle`` says "--" for every custom
    dash tuple, so the pattern itself is compared)."""
    dashes = getattr(line, "_unscaled_dash_pattern", None) or getattr(line, "_dash_pattern", None)
    return to_hex(line.get_color()), line.get_linestyle(), str(dashes), line.get_marker()


def histories(n: int, seeds: int = 1) -> dict:
    """``n`` algorithms, evaluated at iterations 0..4, each with its own numbers."""
    out = {}
    for a in range(n):
        runs = []
        for s in range(seeds):
            runs.append([{"iteration": k, "uploads": k * (a + 1), "bits_up": 100 * k * (a + 1) + 1,
                          "train_loss": 2.0 / (k + 1 + a) + 0.01 * s, "test_acc": 10 + 10 * k + a + s,
                          "test_top5": 20 + 10 * k + a + s}
                         for k in range(5)])
        out[f"algo{a}"] = runs
    return out


@pytest.mark.parametrize("n", [40, 60, 80])
def test_style_pairs_are_unique(n):
    pairs = [pair(style_for(i)) for i in range(n)]
    assert len(set(pairs)) == n


def test_styles_are_deterministic_and_complete():
    assert [style_for(i) for i in range(200)] == [style_for(i) for i in range(200)]
    for i in (0, 9, 79, 80, 159, 160, 1000):
        assert set(style_for(i)) == {"color", "linestyle", "marker"}
    # beyond the unique pairs a marker keeps the full style unique
    triples = {(*pair(s), s["marker"]) for s in map(style_for, range(640))}
    assert len(triples) == 640
    with pytest.raises(ValueError):
        style_for(-1)


def test_first_four_keep_todays_look():
    today = [("tab:blue", "-"), ("tab:orange", "--"), ("tab:green", "-."), ("tab:red", "-")]
    assert [pair(style_for(i)) for i in range(4)] == [(to_hex(c), ls) for c, ls in today]
    for name, (c, ls) in zip(("sgd", "sparse", "lasg", "sasg"), today):
        assert pair(STYLE[name]) == (to_hex(c), ls)
        assert STYLE[name]["marker"] is None


def test_builtin_names_keep_their_style_in_any_order():
    names = ["sasg", "new1", "sgd", "new2", "new3"]
    styles = styles_for(names)
    assert list(styles) == names
    assert styles["sasg"] == STYLE["sasg"] and styles["sgd"] == STYLE["sgd"]
    assert len({pair(s) for s in styles.values()}) == len(names)
    assert styles == styles_for(names)  # deterministic


def test_styles_for_many_names_are_unique():
    names = [f"a{i}" for i in range(50)] + ["lasg", "sparse"]
    styles = styles_for(names)
    assert len({pair(s) for s in styles.values()}) == len(names)
    assert styles["lasg"] == STYLE["lasg"]


@pytest.mark.parametrize("seeds", [1, 3])
def test_twelve_algorithms_draw_twelve_distinct_lines(seeds):
    h = histories(12, seeds)
    figs = [_figure(h, ykey, Y_AXES) for ykey in Y_AXES]
    try:
        mapping = None
        for fig in figs:
            assert len(fig.axes) == 3
            for ax in fig.axes:
                lines = ax.get_lines()
                assert len(lines) == 12
                keys = [line_key(line) for line in lines]
                assert len({k[:3] for k in keys}) == 12  # (colour, line style) all different
                by_label = {line.get_label(): k for line, k in zip(lines, keys)}
                assert list(by_label) == list(h)
                mapping = mapping or by_label
                assert by_label == mapping  # same algorithm, same style, every panel and file
        assert figs[0].axes[0].get_legend() is None  # more than 8: one legend below the panels
        assert len(figs[0].legends) == 1 and len(figs[0].legends[0].get_texts()) == 12
    finally:
        for fig in figs:
            plt.close(fig)


def test_target_line_is_extra_and_grey():
    fig = _figure(histories(12), "test_acc", Y_AXES, target=50.0)
    try:
        lines = fig.axes[0].get_lines()
        assert len(lines) == 13
        assert len({line_key(line)[:3] for line in lines[:12]}) == 12
    finally:
        plt.close(fig)


def test_plot_curves_writes_the_same_files_for_many_algorithms(tmp_path):
    written = plot_curves(histories(12, seeds=2), tmp_path, target=50.0)
    assert written == ["test_acc.png", "train_loss.png"]
    assert all((tmp_path / f).stat().st_size > 5_000 for f in written)
    (tmp_path / "t5").mkdir()
    top5 = plot_curves(histories(12), tmp_path / "t5", metric="test_top5")
    assert top5 == ["test_top5.png", "test_acc.png", "train_loss.png"]


@pytest.mark.parametrize("n", [4, 8, 12, 27])
def test_the_legend_never_covers_the_next_panel(n):
    # Long names: up to 8 entries the legend fits in the first panel (fixed margins); with more it
    # goes below the panels, where it covers none of them (the zoo's 27 algorithms included).
    h = {f"a-very-long-algorithm-name-{a}+topk+ef": runs for a, runs in enumerate(histories(n).values())}
    fig = _figure(h, "test_acc", Y_AXES, target=50.0)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        page = fig.get_window_extent(renderer)
        if n + 1 > 8:
            assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
            legend = fig.legends[0].get_window_extent(renderer)
            assert len(fig.legends[0].get_texts()) == n + 1  # every algorithm and the target
            for ax in fig.axes:
                assert legend.y1 < ax.get_window_extent(renderer).y0, (legend, ax)
        else:
            legend = fig.axes[0].get_legend().get_window_extent(renderer)
            second = fig.axes[1].get_tightbbox(renderer)
            assert legend.x1 < second.x0, (legend, second)
        assert page.contains(legend.x0, legend.y0) and page.contains(legend.x1, legend.y1), (legend, page)
    finally:
        plt.close(fig)
