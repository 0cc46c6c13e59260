"""``segforge serve`` as a real server process on localhost: its answers equal ``segforge.predict``'s, every bad
request gets its 4xx and the server keeps answering, concurrent clients all get their masks."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
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
from segforge.checkpoint import load_model, save_checkpoint  # noqa: E402
from segforge.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("segnet_basic", 3, in_channels=3)
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


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_the_mask_the_shares_and_the_overlay_are_segforge_predicts(server, checkpoint, image) -> None:
    model, info = load_model(checkpoint)
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
    status, body, kind = post(f"{server}/predict?output=overlay", png(image))
    assert status == 200 and Image.open(io.BytesIO(body)).size == (64, 48)
    with urllib.request.urlopen(f"{server}/model") as answer:
        described = json.load(answer)
    assert described["architecture"] == "segnet_basic" and described["classes"] == ["a", "b", "c"]
    assert described["in_channels"] == 3 and described["mean"] == [0.5] * 3


def test_every_bad_request_gets_its_4xx_and_the_server_goes_on(server, image) -> None:
    cases = [
        (b"this is not an image", "notes.txt", 415, "is not an image segforge reads"),
        (b"", "empty.png", 415, "the upload is empty"),
        (png(image[..., 0]), "grey.png", 422, "has 1 channel(s) but the model takes 3"),
        (png(np.zeros((101, 100, 3), np.uint8)), "big.png", 413, "10,100 pixels; this server takes up to 10,000"),
        (os.urandom(70_000), "huge.png", 413, "this server takes up to 0.1 MB"),
    ]
    for data, name, status, message in cases:
        got, body, _ = post(f"{server}/predict", data, name)
        assert (got, message in json.loads(body)["detail"]) == (status, True), (name, body)
    got, body, _ = post(f"{server}/predict?output=pdf", png(image))
    assert got == 422 and "mask" in body.decode()
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
