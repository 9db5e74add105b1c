"""voxtune.viz.visualize: PNG figure and GIF sweep."""
import pytest
from PIL import Image

from voxtune.errors import VoxtuneError
from voxtune.viz import visualize


def test_png(cache_dir, tmp_path):
    out = visualize(cache_dir, "BRATS_001", tmp_path / "fig.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * im.height


def test_png_regions(regions_cache_dir, tmp_path):
    assert visualize(regions_cache_dir, "BRATS_002", tmp_path / "sub" / "fig.png").is_file()


def test_gif(regions_cache_dir, tmp_path):
    out = visualize(regions_cache_dir, "BRATS_001", tmp_path / "sweep.gif")
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames > 10 and im.width >= 200


def test_bad_extension_and_case(cache_dir, tmp_path):
    with pytest.raises(VoxtuneError, match=r"\.jpg"):
        visualize(cache_dir, "BRATS_001", tmp_path / "fig.jpg")
    with pytest.raises(VoxtuneError, match="BRATS_999"):
        visualize(cache_dir, "BRATS_999", tmp_path / "fig.png")
