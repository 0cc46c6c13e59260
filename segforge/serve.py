"""``segforge serve``: a semantic model over HTTP (FastAPI + uvicorn, the ``segforge[serve]`` extra).

    segforge serve --checkpoint runs/x/best.safetensors [--host 127.0.0.1] [--port 8000]

* ``GET /health`` → ``{"status": "ok"}``;
* ``GET /model`` → the architecture, classes, palette, input channels and normalisation;
* ``POST /predict`` (multipart, field ``image``; ``?output=mask|json|overlay``) → the index mask as a palette PNG
  (``mask``, the default), the share of each class's pixels (``json``), or the prediction over the image
  (``overlay``, PNG). OpenAPI docs at ``/docs``.

Uploads are read by segforge's own image reader (PNG, JPEG, TIFF with any bands, ...), so the server takes what
``segforge predict`` takes. Images over ``tile_above`` pixels go through the tiler (memory bounded by the tile).
One request runs the network at a time (a lock: concurrent clients queue instead of oversubscribing the
cores); the decoding, checks and encoding of other requests go on meanwhile. A bad request gets a 4xx answer
naming what is wrong: 413 for an upload or image over the limits, 415 for a file that is not an image segforge
reads, 422 for an image of the wrong channel count; nothing a client sends stops the server.
"""

from __future__ import annotations

import io
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from PIL import Image

from segforge.data.base import scale_image
from segforge.data.io import DatasetError, read_image
from segforge.plots import colorize

DEFAULT_MAX_UPLOAD_MB = 64.0
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_TILE_ABOVE = 4_000_000  # pixels: larger images go through the tiler
TILE = 512


class RequestError(ValueError):
    """A request the server answers with ``status`` (4xx) and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServedModel:
    """The model behind the server, its checkpoint ``info`` and the limits of what it takes."""

    model: object
    info: dict
    max_upload_bytes: int
    max_pixels: int
    tile_above: int

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        classes = max(self.model.num_classes, 2)
        self.classes = list(self.info.get("classes") or [f"class_{i}" for i in range(classes)])
        palette = self.info.get("palette") or []
        if len(palette) < classes:
            from segforge.data.base import default_palette

            palette = default_palette(classes)
        self.palette = [tuple(int(v) for v in colour) for colour in palette]

    def describe(self) -> dict:
        config = getattr(self.model, "config", {}) or {}
        return {
            "architecture": config.get("name"),
            "encoder": config.get("encoder"),
            "classes": self.classes,
            "palette": self.palette,
            "in_channels": self.model.in_channels,
            "mean": self.info.get("mean"),
            "std": self.info.get("std"),
            "tile_above_pixels": self.tile_above,
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
        }

    def read(self, data: bytes, filename: str) -> np.ndarray:
        """The uploaded image as ``(H, W, C)``, checked against the limits and the model's channels."""
        if len(data) > self.max_upload_bytes:
            raise RequestError(
                413,
                f"the upload is {len(data) / 1e6:.1f} MB; this server takes up to "
                f"{self.max_upload_bytes / 1e6:.1f} MB (segforge serve --max-upload-mb)",
            )
        if not data:
            raise RequestError(415, "the upload is empty: send an image file in the form field 'image'")
        suffix = Path(filename or "").suffix.lower() or ".png"
        with tempfile.TemporaryDirectory(prefix="segforge-serve-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                image = read_image(path)
            except DatasetError:
                raise RequestError(
                    415,
                    f"the upload {filename!r} is not an image segforge reads: send a PNG, JPEG, TIFF, BMP, GIF, "
                    "PPM/PGM or WebP file (segforge doctor names what is wrong with a file)",
                ) from None
        pixels = image.shape[0] * image.shape[1]
        if pixels > self.max_pixels:
            raise RequestError(
                413,
                f"the image has {pixels:,} pixels; this server takes up to {self.max_pixels:,} "
                "(segforge serve --max-pixels), or predict it with segforge predict --stream",
            )
        if image.shape[-1] != self.model.in_channels:
            raise RequestError(
                422,
                f"the image has {image.shape[-1]} channel(s) but the model takes "
                f"{self.model.in_channels}; convert it, or serve a model trained on such images",
            )
        return image

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The ``(H, W)`` class of every pixel; one request at a time on the network."""
        from segforge.inference.predict import predict

        tile = TILE if image.shape[0] * image.shape[1] > self.tile_above else None
        with self.lock:
            return predict(self.model, image, info=self.info, tile=tile).mask

    def mask_png(self, labels: np.ndarray) -> bytes:
        """A palette PNG of the classes (a 16-bit grey PNG of them for more than 256 classes), as predict writes."""
        if len(self.classes) > 256:
            return _png(Image.fromarray(labels.astype(np.uint16)))
        picture = Image.fromarray(labels.astype(np.uint8), mode="P")
        flat = [v for colour in self.palette[:256] for v in colour]
        picture.putpalette(flat + [0] * (768 - len(flat)))
        return _png(picture)

    def overlay_png(self, image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> bytes:
        shown = scale_image(image)[..., :3] if image.shape[-1] >= 3 else np.repeat(scale_image(image)[..., :1], 3, -1)
        rgb = np.clip(shown, 0, 1) * 255
        blended = (1 - alpha) * rgb + alpha * colorize(labels, self.palette).astype(np.float32)
        return _png(Image.fromarray(blended.round().astype(np.uint8)))

    def shares(self, labels: np.ndarray) -> dict:
        counts = np.bincount(labels.ravel(), minlength=len(self.classes))
        total = max(int(counts.sum()), 1)
        return {
            "height": int(labels.shape[0]),
            "width": int(labels.shape[1]),
            "shares": {name: float(counts[i]) / total for i, name in enumerate(self.classes)},
        }


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def load_served(checkpoint: str | Path, *, device: str = "cpu", **limits) -> ServedModel:
    """The model of a checkpoint (``.safetensors``) or an exported ``.onnx`` file, ready to serve.

    Raises:
        ValueError: an unreadable checkpoint, or an instance or time-series model (not served yet).
    """
    if str(checkpoint).endswith(".onnx"):
        from segforge.export import load_onnx

        model, info = load_onnx(checkpoint, device=device)
    else:
        from segforge.checkpoint import load_model

        model, info = load_model(checkpoint, map_location=device)
        model.eval()
    if getattr(model, "task", "semantic") != "semantic" or getattr(model, "inputs", "images") != "images":
        kind = "instances" if getattr(model, "task", "") == "instance" else "time series"
        raise ValueError(
            f"{checkpoint} holds a model of {kind}; segforge serve answers with masks of classes of images: "
            "predict it with segforge predict"
        )
    return ServedModel(
        model,
        info,
        max_upload_bytes=int(limits.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB) * 1e6),
        max_pixels=int(limits.get("max_pixels", DEFAULT_MAX_PIXELS)),
        tile_above=int(limits.get("tile_above", DEFAULT_TILE_ABOVE)),
    )


def create_app(served: ServedModel):
    """The FastAPI application of ``served`` (see the module docstring)."""
    app = FastAPI(title="segforge", description="Semantic segmentation of uploaded images")

    @app.exception_handler(RequestError)
    async def _refused(_, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return served.describe()

    @app.post("/predict")
    async def predict(
        image: Annotated[UploadFile, File(description="an image file (PNG, JPEG, TIFF, ...)")],
        output: Annotated[Literal["mask", "json", "overlay"], Query(description="what to answer with")] = "mask",
    ) -> Response:
        data = await image.read(served.max_upload_bytes + 1)
        array = await run_in_threadpool(served.read, data, image.filename or "")
        labels = await run_in_threadpool(served.predict, array)
        if output == "json":
            return JSONResponse(served.shares(labels))
        body = served.mask_png(labels) if output == "mask" else served.overlay_png(array, labels)
        return Response(body, media_type="image/png")

    return app


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", **limits) -> None:
    """Loads the model and serves it until stopped (Ctrl-C)."""
    import uvicorn

    app = create_app(load_served(checkpoint, device=device, **limits))
    uvicorn.run(app, host=host, port=port, log_level="info")
