"""``segforge serve`` as a real server process on localhost: its answers equal ``segforge.predict``'s, every bad
request gets its 4xx and the server keeps answering, concurrent clients all get their masks; its page in a real
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs) driven by Selenium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="segforge serve needs the segforge[serve] extra (make test installs it)")

from segforge import predict  # noqa: E402
from segforge.checkpoint import save_checkpoint  # noqa: E402
from segforge.inference.loading import load_for_inference  # noqa: E402
from segforge.models import create_model  # noqa: E402
from segforge.serve import Batcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
ARTIFACTS = ROOT / "build" / "test-artifacts"  # the page's screenshot is kept here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("segnet_basic", 3, in_channels=3)
    with torch.no_grad():  # without biases, a random network's class varies from pixel to pixel with the image
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return save_checkpoint(path, model, classes=["a", "b", "c"], palette=PALETTE, mean=[0.5] * 3, std=[0.25] * 3)


@pytest.fixture(scope="module")
def server(checkpoint):
    """A real ``segforge serve`` on a free port, with small limits to test against (60 KB, 10,000 pixels)."""
    port = _free_port()
    command = [sys.executable, "-m", "segforge", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--max-upload-mb", "0.06", "--max-pixels", "10000"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                assert json.load(answer) == {"status": "ok"}
                break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"segforge serve did not start: {process.stdout.read().decode()[-2000:]}")
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=30)


def post(url: str, data: bytes, filename: str = "image.png") -> tuple[int, bytes, str]:
    """A multipart POST of one file in the field 'image'; (status, body, content type)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read(), answer.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers["Content-Type"]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_the_mask_the_shares_and_the_overlay_are_segforge_predicts(server, checkpoint, image) -> None:
    model, info = load_for_inference(checkpoint)  # as segforge predict and serve run it (batch norm folded)
    expected = predict(model, image, info=info).mask
    status, body, kind = post(f"{server}/predict", png(image))
    assert status == 200 and kind == "image/png"
    mask = Image.open(io.BytesIO(body))
    assert mask.mode == "P" and mask.getpalette()[:9] == [v for colour in PALETTE for v in colour]
    np.testing.assert_array_equal(np.asarray(mask), expected)
    status, body, _ = post(f"{server}/predict?output=json", png(image))
    shares = json.loads(body)
    assert status == 200 and (shares["height"], shares["width"]) == (48, 64)
    counts = np.bincount(expected.ravel(), minlength=3) / expected.size
    assert shares["shares"] == pytest.approx(dict(zip(["a", "b", "c"], counts.tolist())))
    colours = np.array(PALETTE, np.float64)[expected]
    for opacity in (0.0, 0.3, 1.0):
        status, body, _ = post(f"{server}/predict?output=overlay&opacity={opacity}", png(image))
        overlay = np.asarray(Image.open(io.BytesIO(body)), np.float64)
        assert status == 200 and overlay.shape == (48, 64, 3)
        np.testing.assert_allclose(overlay, (1 - opacity) * image + opacity * colours, atol=0.51)
    status, body, _ = post(f"{server}/predict?output=image", png(image))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), image)
    with urllib.request.urlopen(f"{server}/model") as answer:
        described = json.load(answer)
    assert described["architecture"] == "segnet_basic" and described["classes"] == ["a", "b", "c"]
    assert described["in_channels"] == 3 and described["mean"] == [0.5] * 3


def test_every_bad_request_gets_its_4xx_and_the_server_goes_on(server, image) -> None:
    cases = [
        (b"this is not an image", "notes.txt", 415, "is not an image segforge reads"),
        (b"", "empty.png", 415, "the upload is empty"),
        (png(image[..., 0]), "grey.png", 422, "has 1 channel(s) but the model takes 3"),
        (_tiff(np.full((8, 8, 3), np.nan, np.float32)), "nan.tif", 415, "'nan.tif' holds 192 non-finite pixel"),
        (png(np.zeros((101, 100, 3), np.uint8)), "big.png", 413, "10,100 pixels; this server takes up to 10,000"),
        (os.urandom(70_000), "huge.png", 413, "this server takes up to 0.1 MB"),
    ]
    for data, name, status, message in cases:
        got, body, _ = post(f"{server}/predict", data, name)
        assert (got, message in json.loads(body)["detail"]) == (status, True), (name, body)
    got, body, _ = post(f"{server}/predict?output=pdf", png(image))
    assert got == 422 and "mask" in body.decode()
    got, body, _ = post(f"{server}/predict?output=overlay&opacity=1.5", png(image))
    assert got == 422 and "opacity" in body.decode()
    with urllib.request.urlopen(f"{server}/health") as answer:
        assert json.load(answer) == {"status": "ok"}


def test_concurrent_clients_all_get_their_masks(server, image) -> None:
    pictures = [np.roll(image, shift, axis=1) for shift in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda picture: post(f"{server}/predict", png(picture)), pictures))
    assert all(status == 200 for status, _, _ in answers)
    alone = [np.asarray(Image.open(io.BytesIO(post(f"{server}/predict", png(p))[1]))) for p in pictures[:2]]
    for mask, (_, body, _) in zip(alone, answers[:2]):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), mask)


def test_an_upload_over_the_limit_is_refused_before_its_body_is_read(server) -> None:
    """A declared 1 GB upload is answered 413 at once, without a byte of its body sent; and a chunked one (no
    declared length) once what arrived passes the limit."""
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "0.1 MB (segforge serve --max-upload-mb)" in json.load(answer)["detail"]
    connection.close()
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    chunks = (head if i == 0 else os.urandom(32 * 1024) for i in range(200))  # 6.4 MB if it were all read
    try:
        connection.request("POST", "/predict", body=chunks, headers={"Content-Type": "multipart/form-data; boundary=x"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the rest of the body went out
    answer = connection.getresponse()
    assert answer.status == 413
    with urllib.request.urlopen(f"{server}/health") as answer:
        assert json.load(answer) == {"status": "ok"}


def test_the_batcher_runs_queued_jobs_of_one_key_together_in_order_of_arrival() -> None:
    release, batches = threading.Event(), []

    def run(items: list) -> list:
        batches.append(items)
        release.wait(10)
        if "bad" in items:
            raise ValueError("a bad item")
        return [f"done {item}" for item in items]

    batcher = Batcher(run, max_batch=2, max_pixels=100)  # (a failing batch runs again one job at a time)
    first = batcher.submit("a", key=1, pixels=10)  # runs at once, alone: nothing waits to fill a batch
    time.sleep(0.2)
    jobs = [("b", 1, 10), ("c", 2, 10), ("d", 1, 10), ("e", 1, 10), ("f", 3, 60), ("g", 3, 60), ("bad", 1, 1)]
    futures = [batcher.submit(item, key=key, pixels=pixels) for item, key, pixels in jobs]
    release.set()
    assert first.result(10) == "done a" and [f.result(10) for f in futures[:-1]] == [f"done {j[0]}" for j in jobs[:-1]]
    with pytest.raises(ValueError, match="a bad item"):
        futures[-1].result(10)
    # b and d share key 1 (e waits: max_batch 2); f and g share key 3 but not the 100-pixel budget; e's batch
    # with the bad item fails and runs again one by one: only the bad item's request gets the error
    assert batches == [["a"], ["b", "d"], ["c"], ["e", "bad"], ["e"], ["bad"], ["f"], ["g"]]
    batcher.close()
    with pytest.raises(RuntimeError, match="stopping"):
        batcher.submit("h", key=1, pixels=1)


def test_masks_come_out_as_segforge_predict_writes_them_with_the_label_map(tmp_path, image) -> None:
    """A checkpoint trained on masks stored as 0/255 answers 0/255 masks, as ``segforge predict`` writes them."""
    from segforge.inference import predict_files
    from segforge.serve import load_served

    model = create_model("segnet_basic", 2, in_channels=3)
    path = save_checkpoint(tmp_path / "m.safetensors", model, classes=["bg", "cell"], label_map=[[0, 0], [255, 1]])
    Image.fromarray(image).save(tmp_path / "x.png")
    loaded, info = load_for_inference(path)
    (written,) = predict_files(loaded, info, [tmp_path / "x.png"], tmp_path / "out", label_map={0: 0, 255: 1})
    served = load_served(path)
    answer = Image.open(io.BytesIO(served.mask_png(served.predict(image))))
    assert served.describe()["mask_png"] == "palette" and set(np.unique(np.asarray(answer))) <= {0, 255}
    np.testing.assert_array_equal(np.asarray(answer), np.asarray(Image.open(written)))
    assert answer.getpalette()[: 3 * 256] == Image.open(written).getpalette()[: 3 * 256]
    served.batcher.close()


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium from the OS packages, downloading into a folder of its own."""
    if not (CHROMIUM and CHROMEDRIVER):
        reason = "the page's test needs Chromium and its driver: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs them when missing)")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="the page's test drives Chromium with selenium")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,800")
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver, downloads
    driver.quit()


def _downloaded(folder: Path, name: str) -> Path:
    deadline = time.monotonic() + 30
    while not (folder / name).exists() or any(folder.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"{name} was not downloaded: {sorted(folder.iterdir())}"
        time.sleep(0.1)
    return folder / name


def test_the_page_shows_the_prediction_and_downloads_segforge_predicts_mask(
    server, checkpoint, browser, image, tmp_path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, downloads = browser
    source = tmp_path / "cells.png"
    Image.fromarray(image).save(source)
    command = [sys.executable, "-m", "segforge", "predict", "--checkpoint", str(checkpoint), str(source)]
    subprocess.run([*command, "--out", str(tmp_path / "predicted")], check=True, cwd=ROOT, capture_output=True)
    expected = np.asarray(Image.open(tmp_path / "predicted" / "cells.png"))

    driver.get(f"{server}/")
    WebDriverWait(driver, 30).until(lambda d: "segnet_basic" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(source))
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, 60).until(lambda _: status.get_attribute("data-state") in ("done", "error"))
    assert status.get_attribute("data-state") == "done" and "64 x 48 pixels" in status.text, status.text

    rows = driver.find_elements(By.CSS_SELECTOR, "#legend li")
    shares = np.bincount(expected.ravel(), minlength=3) / expected.size
    assert [row.find_element(By.CLASS_NAME, "name").text for row in rows] == ["a", "b", "c"]
    assert [row.find_element(By.CLASS_NAME, "share").text for row in rows] == [f"{100 * v:.1f} %" for v in shares]
    swatches = [row.find_element(By.CLASS_NAME, "swatch").value_of_css_property("background-color") for row in rows]
    assert swatches == [f"rgba({r}, {g}, {b}, 1)" for r, g, b in PALETTE]

    def canvas_at(opacity: int) -> np.ndarray:
        pixels = driver.execute_script(
            "const slider = document.getElementById('opacity'); slider.value = arguments[0];"
            "slider.dispatchEvent(new Event('input'));"
            "const view = document.getElementById('view');"
            "return Array.from(view.getContext('2d').getImageData(0, 0, view.width, view.height).data);",
            opacity,
        )
        return np.array(pixels, np.float64).reshape(48, 64, 4)[..., :3]

    colours = np.array(PALETTE, np.float64)[expected]
    np.testing.assert_array_equal(canvas_at(0), image)  # the image alone
    np.testing.assert_array_equal(canvas_at(100), colours)  # the classes' colours alone
    np.testing.assert_allclose(canvas_at(40), 0.6 * image + 0.4 * colours, atol=2)  # 8-bit compositing
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "serve_page.png"))

    driver.find_element(By.ID, "download-mask").click()
    mask = Image.open(_downloaded(downloads, "cells_mask.png"))
    assert mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask), expected)
    driver.find_element(By.ID, "download-overlay").click()
    overlay = np.asarray(Image.open(_downloaded(downloads, "cells_overlay.png")).convert("RGB"), np.float64)
    np.testing.assert_allclose(overlay, 0.6 * image + 0.4 * colours, atol=2)  # 8-bit compositing

    # a 16-bit TIFF, which no browser draws: the page shows it as the server reads it (output=image)
    (tmp_path / "scan.tif").write_bytes(_tiff(image.astype(np.uint16) * 257))
    driver.find_element(By.ID, "file").send_keys(str(tmp_path / "scan.tif"))
    WebDriverWait(driver, 60).until(
        lambda _: status.text.startswith("scan.tif") and status.get_attribute("data-state") in ("done", "error")
    )
    assert status.get_attribute("data-state") == "done", status.text
    np.testing.assert_array_equal(canvas_at(0), image)

    # dropped on the page rather than chosen: a drop event carrying the file
    driver.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const files = new DataTransfer(); files.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: files, bubbles: true}));",
        base64.b64encode(source.read_bytes()).decode(),
    )
    WebDriverWait(driver, 60).until(lambda _: status.text.startswith("dropped.png") and "pixels" in status.text)
    np.testing.assert_array_equal(canvas_at(100), colours)

    (tmp_path / "notes.txt").write_text("not an image")
    driver.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.txt"))
    WebDriverWait(driver, 30).until(lambda _: status.get_attribute("data-state") == "error")
    assert "415" in status.text and "is not an image segforge reads" in status.text
