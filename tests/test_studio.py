"""``exprfast studio`` and the prepared-photo API under it (``editing.PreparedPhoto``).

Function tests run the page's logic (``studio.Studio``) directly with a tiny random model; they
need no gradio. One end-to-end test drives the real page in headless Chromium through Selenium
(Debian's ``chromium`` + ``chromium-driver``; nothing is downloaded); it skips when gradio,
selenium or the browser is missing. With ``EXPRFAST_SCREENSHOT=docs/studio.png`` it saves a
screenshot of the page there (the README's).
"""
import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_model
from exprfast import studio as studio_module
from exprfast.editing import (SAMPLE_PHOTOS, Editor, NoFaceFound, PreparedPhoto, edit_photo,
                              faces as facelib)
from exprfast.studio.state import ALL_FACES, SLIDER_RANGE, Studio

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def editor():
    return Editor(tiny_model())


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    """The two sample photos side by side (two faces, 1024x512 PNG)."""
    photos = [Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS]
    both = Image.new("RGB", (1024, 512))
    both.paste(photos[0], (0, 0))
    both.paste(photos[1], (512, 0))
    path = tmp_path_factory.mktemp("photos") / "two.png"
    both.save(path)
    return path


# ----------------------------------------------------------------------------- PreparedPhoto


@pytest.mark.parametrize("photo", SAMPLE_PHOTOS, ids=lambda p: p.name)
def test_render_equals_edit_photo(editor, photo):
    """Detect + encode once, then decode + paste only: the very pixels of edit_photo
    (tolerance 0)."""
    prepared = PreparedPhoto(photo, editor)
    for value in (-0.5, 0.0, 1.0, 2.0):
        expected = edit_photo(photo, {"Smiling": value}, model=editor)
        result = prepared.render({"Smiling": value})
        assert result.mode == expected.mode and result.size == expected.size
        np.testing.assert_array_equal(np.asarray(result), np.asarray(expected))
    # known current values, as edit_photo's `current`
    prepared = PreparedPhoto(photo, editor, current={"Smiling": 0.2})
    assert prepared.readings() == pytest.approx({"Smiling": 0.2})
    np.testing.assert_array_equal(
        np.asarray(prepared.render({"Smiling": 1.5})),
        np.asarray(edit_photo(photo, {"Smiling": 1.5}, model=editor, current={"Smiling": 0.2})))


def test_render_equals_edit_photo_several_faces_and_modes(two_faces):
    editor = Editor(tiny_model(("Smiling", "Male"), seed=1))
    prepared = PreparedPhoto(two_faces, editor)
    assert len(prepared.faces) == 2
    for face in (None, 0, 1, -1):
        expected = edit_photo(two_faces, {"Smiling": 1.5}, model=editor, face=face)
        np.testing.assert_array_equal(np.asarray(prepared.render({"Smiling": 1.5}, face=face)),
                                      np.asarray(expected))
    changes = {"Smiling": 0.0, "Male": 1.0}
    np.testing.assert_array_equal(np.asarray(prepared.render(changes)),
                                  np.asarray(edit_photo(two_faces, changes, model=editor)))
    for paste in ("residual", "warp"):  # the other modes at the photo's resolution
        np.testing.assert_array_equal(
            np.asarray(prepared.render(changes, paste=paste)),
            np.asarray(edit_photo(two_faces, changes, model=editor, paste=paste)))
    with pytest.raises(ValueError, match="paste must be one of hybrid, residual, warp"):
        prepared.render(changes, paste="replace")
    with pytest.raises(ValueError, match="2 faces"):
        prepared.render({"Smiling": 1.0}, face=2)
    with pytest.raises(ValueError, match="unknown attribute"):
        prepared.render({"Smiles": 1.0})
    # grey and transparent photos keep their mode, as with edit_photo
    rgb = Image.open(SAMPLE_PHOTOS[0])
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    for image in (rgb.convert("L"), rgba):
        result = PreparedPhoto(image, editor).render(changes)
        expected = edit_photo(image, changes, model=editor)
        assert result.mode == expected.mode == image.mode
        np.testing.assert_array_equal(np.asarray(result), np.asarray(expected))


def test_readings_are_the_models_reading(editor, two_faces):
    """The sliders' starting values: Editor.estimate of each aligned face crop."""
    prepared = PreparedPhoto(two_faces, editor)
    pixels = np.asarray(Image.open(two_faces).convert("RGB"))
    for k, face in enumerate(prepared.faces):
        size = int(min(1024, max(editor.img_size, round(face.crop_side))))
        crop = facelib.crop_face(pixels, face, size)
        expected = editor.estimate(crop[None])[0].tolist()
        assert prepared.readings(k) == dict(zip(editor.attrs, expected))
    studio = Studio(editor)
    out = studio.open(two_faces)
    assert out["values"] == [pytest.approx(prepared.readings(0)["Smiling"])]  # grid values
    assert out["faces"] == [ALL_FACES, "Face 1", "Face 2"]
    assert studio.choose_face(out["state"], "Face 2")["values"] == [
        pytest.approx(prepared.readings(1)["Smiling"])]


def test_prepared_photo_without_a_face(editor):
    with pytest.raises(NoFaceFound, match="no face"):
        PreparedPhoto(Image.new("RGB", (200, 150), (90, 120, 200)), editor)


# ----------------------------------------------------------------------------- the page's logic


def test_studio_open_render_download_grid(editor, tmp_path):
    studio = Studio(editor, workdir=tmp_path)
    out = studio.open(str(SAMPLE_PHOTOS[0]))
    assert not out["warning"] and "1 face" in out["message"]
    reading = PreparedPhoto(SAMPLE_PHOTOS[0], editor).readings()["Smiling"]
    assert out["values"] == [pytest.approx(reading)]
    assert out["original"].size == out["edited"].size == (512, 512)
    assert Path(out["download"]).name == "london_007-edited.jpg"
    state = out["state"]

    moved = studio.render(state, ALL_FACES, 1.5)
    assert not moved["warning"] and moved["message"] == "Smiling = 1.5 on every face."
    expected = edit_photo(SAMPLE_PHOTOS[0], {"Smiling": 1.5}, model=editor)
    np.testing.assert_array_equal(np.asarray(moved["edited"]), np.asarray(expected))
    download = studio.download(state, ALL_FACES, 1.5)["download"]
    with Image.open(download) as saved:  # JPEG like the photo (quality 95)
        assert saved.format == "JPEG" and saved.size == (512, 512)
    # a slider back at the reading is "no change"
    assert studio.render(state, ALL_FACES, out["values"][0])["message"].startswith("No change")

    grid = studio.grid(state, ALL_FACES, ["Smiling"], 5, -0.5, 1.5, 1.0)
    assert not grid["warning"] and grid["grid"].size == (6 * 128, 128)
    # exprfast studio --paste warp: the sliders render as edit_photo's warp paste
    warped = Studio(editor, workdir=tmp_path, paste="warp")
    moved = warped.render(warped.open(str(SAMPLE_PHOTOS[0]))["state"], ALL_FACES, 1.5)
    expected = edit_photo(SAMPLE_PHOTOS[0], {"Smiling": 1.5}, model=editor, paste="warp")
    np.testing.assert_array_equal(np.asarray(moved["edited"]), np.asarray(expected))
    with pytest.raises(ValueError, match="paste must be one of hybrid, residual, warp"):
        Studio(editor, paste="replace")


def test_studio_bad_inputs_give_messages(editor, tmp_path):
    """Not an image, no face, too large, missing, nothing loaded: a message (warning=True),
    never an exception."""
    studio = Studio(editor, workdir=tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), (90, 120, 200)).save(blank)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(SAMPLE_PHOTOS[0].read_bytes()[:3000])
    cases = {text: "not an image", blank: "No face found in blank.png",
             tmp_path / "missing.jpg": "no such file", truncated: "not a readable image"}
    for path, wanted in cases.items():
        out = studio.open(str(path))
        assert out["warning"] and wanted in out["message"], out["message"]
        assert out["state"] is None and out["edited"] is None
    assert not studio.open(None)["warning"]  # cleared upload: a hint, not a warning

    # huge photos: refused above max_pixels, downscaled above max_side
    assert "too large" in Studio(editor, max_pixels=100_000).open(SAMPLE_PHOTOS[0])["message"]
    small = Studio(editor, max_side=256, workdir=tmp_path).open(SAMPLE_PHOTOS[0])
    assert not small["warning"] and "downscaled from 512×512 to 256×256" in small["message"]
    assert small["edited"].size == (256, 256)

    for out in (studio.render(None, ALL_FACES, 1.0), studio.download(None, ALL_FACES, 1.0),
                studio.choose_face(None, "Face 1"),
                studio.grid(None, ALL_FACES, ["Smiling"], 7, -0.5, 1.5, 1.0)):
        assert out["warning"] and "photo first" in out["message"]
    state = studio.open(SAMPLE_PHOTOS[0])["state"]
    assert "no 'Face 3'" in studio.choose_face(state, "Face 3")["message"]
    assert "at least one attribute" in studio.grid(state, ALL_FACES, [], 7, 0, 1, 1.0)["message"]
    assert studio.grid(state, ALL_FACES, ["Smiling"], 1, 0, 1, 1.0)["warning"]
    assert studio.grid(state, ALL_FACES, ["Smiling"], 7, float("nan"), 1, 1.0)["warning"]


def test_arguments_and_run_without_gradio(monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    studio_module.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "70000"])
    assert "must be 1..65535" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert studio_module.run(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "exprfast[studio]"' in err


def test_importing_the_studio_does_not_import_gradio():
    code = ("import sys, exprfast.studio, exprfast.cli; "
            "assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ----------------------------------------------------------------------------- the real page


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:  # the local server
        return np.asarray(Image.open(BytesIO(response.read())).convert("RGB"))


def test_page_in_a_headless_browser(tmp_path, monkeypatch):
    """Start the page, upload a sample, drag the slider: the edited photo changes."""
    pytest.importorskip("gradio", reason='gradio is not installed (pip install "exprfast[studio]")')
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            pytest.skip(f"{path} not found (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import exprfast

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    editor = exprfast.load()  # the bundled model
    app = studio_module.build_app(Studio(editor, workdir=tmp_path / "downloads"))
    port = _free_port()
    app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        ssr_mode=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1360,900", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps"):
        options.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}/")

        def status():
            return driver.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")

        def edited_src():
            found = driver.find_elements(By.CSS_SELECTOR, "#edited img")
            return found[0].get_attribute("src") if found else None

        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR,
                                                     "#photo-upload input[type=file]"))
        upload.send_keys(str(SAMPLE_PHOTOS[0]))
        wait.until(lambda d: "1 face" in status() and edited_src())
        before = edited_src()
        number = driver.find_element(By.CSS_SELECTOR, "#slider-0 input[type=number]")
        reading = PreparedPhoto(SAMPLE_PHOTOS[0], editor).readings()["Smiling"]
        assert float(number.get_attribute("value")) == pytest.approx(reading, abs=0.006)

        slider = driver.find_element(By.CSS_SELECTOR, "#slider-0 input[type=range]")
        ActionChains(driver).click_and_hold(slider).move_by_offset(
            slider.size["width"] // 2, 0).release().perform()  # drag to the right end
        wait.until(lambda d: edited_src() != before and "on every face" in status())
        assert float(number.get_attribute("value")) == pytest.approx(SLIDER_RANGE[1])
        assert status() == f"Smiling = {SLIDER_RANGE[1]:g} on every face."
        assert not np.array_equal(_fetch_image(before), _fetch_image(edited_src()))

        screenshot = os.environ.get("EXPRFAST_SCREENSHOT")
        if screenshot:
            time.sleep(1)  # let the new image paint
            target = Path(screenshot)
            target = target if target.is_absolute() else REPO / target
            target.parent.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(target))
    finally:
        if driver is not None:
            driver.quit()
        app.close()
