"""Cropping images to their ink (``image_crop: ink``): the square around the drawing, the
background kept, position and scale normalised; the same crop on training data (Omniglot
zips, image folders), support sets and inputs of adapted models; model directories carry
it and refuse a forged value."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafit.data.image_folder import ImageFolder, decode_image
from metafit.data.ink_crop import crop_to_ink
from metafit.data.omniglot import Omniglot
from metafit.deploy import AdaptedModel, Adapter, ModelDirError, load_support
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def canvas(side: int, box: tuple[int, int, int, int], ink: int = 0,
           background: int = 255) -> np.ndarray:
    """``uint8 [side, side]``: ``background`` with the rectangle ``(x0, y0, x1, y1)``
    (inclusive) of ``ink``."""
    a = np.full((side, side), background, np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1 + 1, x0:x1 + 1] = ink
    return a


def glyph(side: int, x: int, y: int, scale: int) -> np.ndarray:
    """A black plus sign with an off-centre dot, ``5 * scale`` wide, its top-left corner at
    ``(x, y)`` on a white ``side x side`` canvas: one character drawn at any place/size."""
    a = np.full((side, side), 255, np.uint8)
    cell = np.ones((scale, scale), bool)
    shape = np.zeros((5, 5), bool)
    shape[2, :] = shape[:, 2] = True
    shape[0, 4] = True
    a[y:y + 5 * scale, x:x + 5 * scale][np.kron(shape, cell)] = 0
    return a


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# -- the crop ----------------------------------------------------------------------------
def test_the_crop_is_the_inks_square_with_its_margin_and_keeps_the_aspect() -> None:
    img = Image.fromarray(canvas(100, (10, 30, 29, 39)))  # ink 20 wide, 10 high
    out = np.asarray(crop_to_ink(img, margin=0.1))
    assert out.shape == (24, 24)  # round(20 * 1.2)
    ys, xs = np.nonzero(out < 128)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 21, 7, 16)  # centred, not stretched
    assert (out >= 128).sum() == 24 * 24 - 200  # everything else is background


def test_light_ink_on_dark_and_ink_at_the_edge_pad_with_the_background() -> None:
    img = Image.fromarray(canvas(40, (0, 0, 9, 9), ink=250, background=5))  # in the corner
    out = np.asarray(crop_to_ink(img, margin=0.5))
    assert out.shape == (20, 20)
    assert (out > 128).sum() == 100  # the ink, nothing else: the padding is the background
    assert out[0, 0] == 5 and out[-1, -1] == 5


def test_rgb_images_are_padded_with_the_border_colour() -> None:
    a = np.zeros((30, 30, 3), np.uint8)
    a[:] = (200, 10, 40)
    a[0:5, 0:5] = (0, 0, 0)  # ink touching the top-left corner
    out = np.asarray(crop_to_ink(Image.fromarray(a, "RGB"), margin=0.2))
    assert out.shape == (7, 7, 3)  # round(5 * 1.4)
    assert tuple(out[-1, -1]) == (200, 10, 40) and tuple(out[3, 3]) == (0, 0, 0)


def test_a_blank_image_is_left_as_it_is() -> None:
    img = Image.fromarray(np.full((12, 16), 255, np.uint8))
    assert crop_to_ink(img) is img
    with pytest.raises(ValueError, match="margin"):
        crop_to_ink(img, margin=-0.1)


def test_position_and_scale_are_normalised_away() -> None:
    small = png(glyph(64, x=3, y=40, scale=4))  # 20 pixels, bottom left
    large = png(glyph(64, x=12, y=5, scale=8))  # 40 pixels, top
    crops = [decode_image(f, 20, crop="ink").astype(float) for f in (small, large)]
    whole = [decode_image(f, 20).astype(float) for f in (small, large)]
    assert np.abs(crops[0] - crops[1]).mean() < 5  # the same character after the crop
    assert np.abs(whole[0] - whole[1]).mean() > 40  # ... and two images without it
    with pytest.raises(ValueError, match="unknown crop 'box'"):
        decode_image(small, 20, crop="box")


# -- the datasets --------------------------------------------------------------------------
def omniglot_zip(root: Path) -> Path:
    """``images_background.zip``: 2 characters x 3 drawers, each drawing the character at
    its own place and size (20, 40 or 20 pixels) on a 60 x 60 canvas."""
    path = root / "images_background.zip"
    with zipfile.ZipFile(path, "w") as z:
        for c in (1, 2):
            for d in (1, 2, 3):
                x, y, scale = {1: (2, 36, 4), 2: (15, 2, 8), 3: (38, 30, 4)}[d]
                a = glyph(60, x, y, scale)
                if c == 2:
                    a = np.ascontiguousarray(a[:, ::-1])  # the mirror image
                z.writestr(f"images_background/Alpha/character{c:02d}/{c:02d}{d:02d}_{d:02d}.png",
                           png(a))
    return path


def test_omniglot_crops_every_drawing_and_caches_the_two_apart(tmp_path: Path) -> None:
    omniglot_zip(tmp_path)
    plain = Omniglot(tmp_path, image_size=16, rotations=False)
    cropped = Omniglot(tmp_path, image_size=16, rotations=False, crop="ink")
    again = Omniglot(tmp_path, image_size=16, rotations=False, crop="ink")  # from the cache
    assert torch.equal(cropped.data, again.data) and not torch.equal(cropped.data, plain.data)
    def differences(ds: Omniglot) -> list[float]:
        """Mean absolute differences (grey levels) between drawer 1 and drawers 2, 3."""
        drawings = ds.examples(0).float() * 255  # [3, 1, 16, 16]
        return [(drawings[0] - drawings[d]).abs().mean().item() for d in (1, 2)]

    assert max(differences(cropped)) < 5 < 20 < min(differences(plain))
    with pytest.raises(ValueError, match="unknown crop"):
        Omniglot(tmp_path, image_size=16, crop="tight")


def glyph_folder(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    """Class-per-folder 32 x 32 images: class c is the glyph turned c quarter turns, each
    example at its own place and size."""
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            a = np.rot90(glyph(32, x=1 + 3 * i, y=14 - 3 * i, scale=2 + i % 2), c)
            Image.fromarray(np.ascontiguousarray(a)).save(d / f"{i}.png")
    return root


def test_a_model_trained_on_cropped_images_crops_its_inputs(tmp_path: Path) -> None:
    data = glyph_folder(tmp_path / "data")
    recipe = classification_recipe(data, "protonet", image_crop="ink", iterations=2,
                                   split_classes=False, val_every=2, checkpoint_every=2)
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    adapter = Adapter.from_run(tmp_path / "run")
    assert adapter.preprocessor.spec()["crop"] == "ink"
    files = sorted(str(p) for p in data.glob("*/*.png"))
    expected = ImageFolder(data, image_size=8, crop="ink", cache=False)
    x = adapter.preprocessor(files)  # [16, 1, 8, 8]
    assert torch.equal(x, expected.gather(torch.arange(len(expected))))
    uncropped = ImageFolder(data, image_size=8, cache=False)
    assert not torch.equal(expected.data, uncropped.data)

    inputs, labels = load_support(data, "image")
    model = adapter.adapt(inputs, labels)
    saved = model.save(tmp_path / "model")
    spec = json.loads((saved / "model.json").read_text())
    assert spec["preprocessing"]["crop"] == "ink"
    loaded = AdaptedModel.load(saved)
    torch.testing.assert_close(loaded.predict_proba(files), model.predict_proba(files),
                               rtol=0, atol=0)


def test_model_directories_without_a_crop_read_as_before_and_forged_ones_are_refused(
        tmp_path: Path) -> None:
    from test_model_dir_safety import _rewrite

    data = glyph_folder(tmp_path / "data", classes=2, per_class=3)
    recipe = classification_recipe(data, "protonet", iterations=2, val_every=2,
                                   split_classes=False, checkpoint_every=2)
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    inputs, labels = load_support(data, "image")
    saved = Adapter.from_run(tmp_path / "run").adapt(inputs, labels).save(tmp_path / "m")
    spec = json.loads((saved / "model.json").read_text())
    assert "crop" not in spec["preprocessing"]  # byte-identical to directories made before
    assert AdaptedModel.load(saved).preprocessor.crop == "none"
    _rewrite(saved, "model.json", lambda b: b.replace(b'"invert": false',
                                                      b'"invert": false, "crop": "evil"'))
    with pytest.raises(ModelDirError, match="preprocessing.crop must be one of none, ink"):
        AdaptedModel.load(saved)


def test_recipes_take_the_crop_only_where_images_are_decoded_from_files() -> None:
    from metafit.config.schema import make_recipe

    assert make_recipe({"dataset": "omniglot", "image_crop": "ink"}).image_crop == "ink"
    for dataset in ("glyphs", "idx"):
        with pytest.raises(ValueError, match=f"image_crop 'ink' is for datasets decoded from "
                                             f"image files .* not '{dataset}'"):
            make_recipe({"dataset": dataset, "image_crop": "ink"})


# -- hostile images (review of 2026-12-06) --------------------------------------------------
def test_a_thin_strip_does_not_make_a_huge_square() -> None:
    from metafit.data.ink_crop import MAX_CROP_SIDE

    strip = np.full((1, 16000), 255, np.uint8)
    strip[0, 0] = strip[0, -1] = 0  # ink at both ends: a (1.2 x 16000)^2 square before
    out = crop_to_ink(Image.fromarray(strip))
    assert out.size == (MAX_CROP_SIDE, MAX_CROP_SIDE)
    row = np.asarray(out)[MAX_CROP_SIDE // 2]
    dark = np.flatnonzero(row < 255)
    assert dark.size >= 2 and dark[0] < MAX_CROP_SIDE * 0.2 and dark[-1] > MAX_CROP_SIDE * 0.8


def test_the_crop_takes_about_a_byte_a_pixel() -> None:
    import tracemalloc

    a = np.full((2048, 2048), 255, np.uint8)
    a[:, :1024] = 0  # half of it ink: the old int16 copy and index arrays took ~11x
    img = Image.fromarray(a)
    tracemalloc.start()
    crop_to_ink(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * a.nbytes, peak


def test_transparency_exif_and_formats(tmp_path: Path) -> None:
    from metafit.data.image_folder import IMAGE_FORMATS

    rgba = np.zeros((20, 20, 4), np.uint8)  # transparent black everywhere ...
    rgba[5:15, 9:11] = (0, 0, 0, 255)  # ... but an opaque black stroke
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    out = decode_image(buf.getvalue(), 20)
    assert out[0, 0] == 255 and out[10, 10] == 0  # the stroke on white, not black on black
    upright = np.full((10, 30), 255, np.uint8)
    upright[:, :3] = 0  # ink on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, "JPEG", exif=exif, quality=95)
    shown = decode_image(buf.getvalue(), 30)
    assert shown[:3].mean() < 100 and shown[-3:].mean() > 200  # the ink is at the top
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, "ICO")  # any name; not a documented format
    (tmp_path / "icon.png").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="not a PNG or JPEG or BMP"):
        decode_image(tmp_path / "icon.png", 8)
    assert "PNG" in IMAGE_FORMATS and "ICO" not in IMAGE_FORMATS
