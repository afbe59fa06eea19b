"""core/plots.py: PNGs for the UI, embeddable in markdown metadata."""

import base64
import io
import itertools
import re

from PIL import Image

from stage1_assets.core import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# _figure(): 6 x 3.2 inches at 100 dpi
SIZE = (600, 320)


def image(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def test_markdown_image_embeds_the_png_bytes_unchanged():
    png = plots.histogram({"a": [1.0, 2.0]}, "words")
    text = plots.markdown_image(png, "response length")
    match = re.fullmatch(r"!\[(.*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert match and match.group(1) == "response length"
    assert base64.b64decode(match.group(2)) == png


def test_histogram_is_a_png_of_the_figure_size_and_draws_each_series():
    one = image(plots.histogram({"pilot": [3, 4, 12, 40]}, "words"))
    two = image(plots.histogram({"pilot": [3, 4, 12, 40], "shards": [1, 7, 7, 90]}, "words"))
    assert one.size == two.size == SIZE
    # a second series adds bars (and a legend entry) in another colour
    assert len(set(two.convert("RGB").getdata())) > len(set(one.convert("RGB").getdata()))


def test_histogram_with_an_empty_series_still_renders():
    assert image(plots.histogram({"accepted": [], "rejected": []}, "score")).size == SIZE
    assert image(plots.histogram({"accepted": [], "rejected": [2.5]}, "score", bin_width=0.5)).size == SIZE


def test_loss_curve_with_and_without_validation_points():
    history = [{"step": s, "train_loss": 3.0 - 0.1 * s} for s in range(1, 11)]
    history[4]["val_loss"], history[9]["val_loss"] = 2.8, 2.5
    with_val = image(plots.loss_curve(history))
    without = image(plots.loss_curve([{k: v for k, v in h.items() if k != "val_loss"} for h in history]))
    assert with_val.size == without.size == SIZE
    assert list(with_val.convert("RGB").getdata()) != list(without.convert("RGB").getdata())


def test_histogram_bins_cover_every_value_at_the_bin_width(monkeypatch):
    """Bins start at 0 and reach past the largest value of any series, so no count is dropped."""
    from matplotlib.axes import Axes

    calls = []
    real_hist = Axes.hist

    def spy(self, values, bins=None, **kwargs):
        calls.append((list(values), list(bins)))
        return real_hist(self, values, bins=bins, **kwargs)

    monkeypatch.setattr(Axes, "hist", spy)
    plots.histogram({"a": [0, 4.9, 5], "b": [17, 20]}, "words", bin_width=5)
    assert len(calls) == 2
    for values, bins in calls:
        assert bins[0] == 0 and all(b - a == 5 for a, b in itertools.pairwise(bins))
        assert all(bins[0] <= v < bins[-1] for v in values), (values, bins)
    assert calls[0][1] == calls[1][1], "all series share one set of bins, so their bars line up"
