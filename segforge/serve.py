"""``segforge serve``: a semantic model over HTTP (FastAPI + uvicorn, the ``segforge[serve]`` extra).

    segforge serve --checkpoint runs/x/best.safetensors [--host 127.0.0.1] [--port 8000]

* ``GET /health`` → ``{"status": "ok"}``;
* ``GET /model`` → the architecture, classes, palette, input channels and normalisation;
* ``POST /predict`` (multipart, field ``image``; ``?output=mask|json|overlay``) → the index mask as a palette PNG
  (``mask``, the default), the share of each class's pixels (``json``), or the prediction over the image
  (``overlay``, PNG). OpenAPI docs at ``/docs``.

* ``GET /`` → a web page: drop an image on it, see the prediction over it with an opacity slider and a legend of
  the classes with their colours and shares, download the mask and the overlay (one HTML file, no external
  scripts or fonts).

The ``mask`` and ``overlay`` answers carry the class shares in the ``X-Class-Shares`` header (JSON, as ``json``
answers them); ``output=image`` answers the upload as the server reads it, as an 8-bit RGB PNG, without running
the network (the page shows TIFF and other files a browser cannot draw with it).

Uploads are read by segforge's own image reader (PNG, JPEG, TIFF with any bands, ...), so the server takes what
``segforge predict`` takes. Images over ``tile_above`` pixels go through the tiler (memory bounded by the tile).
One thread runs the network (``Batcher``): concurrent requests queue instead of oversubscribing the cores, and
queued images of one size go through the network as one batch (up to ``max_batch`` images and ``tile_above``
pixels), which waits for no one: a lone request runs at once. The decoding, checks and encoding of other requests
go on meanwhile. A bad request gets a 4xx answer naming what is wrong: 413 for an upload or image over the limits
(an upload whose declared or received size is over the limit is refused before the rest of it is read), 415 for a
file that is not an image segforge reads, 422 for an image of the wrong channel count; nothing a client sends stops
the server.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import tempfile
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from segforge.data.base import scale_image
from segforge.data.io import DatasetError, read_image
from segforge.plots import blend, display_rgb, index_picture
from segforge.runtime import cap_malloc_arenas

DEFAULT_MAX_UPLOAD_MB = 64.0
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_TILE_ABOVE = 4_000_000  # pixels: larger images go through the tiler
DEFAULT_MAX_BATCH = 4  # measured best of 1, 4, 8 on 2 CPU cores and on an H200 (bench/serve_load.py)
TILE = 512
MULTIPART_ALLOWANCE = 64 * 1024  # bytes of a multipart body beyond its file: boundaries, headers, other fields


class RequestError(ValueError):
    """A request the server answers with ``status`` (4xx) and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    key: Hashable | None  # jobs of one key may run as one batch; None: alone
    item: object
    pixels: int
    future: Future = field(default_factory=Future)


class Batcher:
    """One thread that runs ``run(items) -> results`` for the jobs submitted to it, in order of arrival.

    The oldest queued job goes next, with the jobs queued behind it that share its key, up to ``max_batch`` jobs
    and ``max_pixels`` pixels together. Nothing waits to fill a batch: under light load every job runs alone as
    soon as it comes, under heavy load the queue is what batches. When ``run`` raises on a batch, its jobs run
    again one by one, so that an exception is only the failing job's."""

    def __init__(self, run: Callable[[list], list], *, max_batch: int, max_pixels: int) -> None:
        self.run, self.max_batch, self.max_pixels = run, max_batch, max_pixels
        self.queue: list[_Job] = []
        self.batches = 0  # batches run (jobs / batches: the mean batch)
        self.jobs = 0
        self.ready = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="segforge-batcher", daemon=True)
        self.thread.start()

    def submit(self, item: object, *, key: Hashable | None, pixels: int) -> Future:
        job = _Job(key, item, pixels)
        with self.ready:
            if self.closed:
                raise RuntimeError("the server is stopping")
            self.queue.append(job)
            self.ready.notify()
        return job.future

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify()
        self.thread.join()

    def _next_batch(self) -> list[_Job]:
        first = self.queue[0]
        batch, pixels = [first], first.pixels
        if first.key is not None:
            for job in self.queue[1:]:
                if len(batch) == self.max_batch:
                    break
                if job.key == first.key and pixels + job.pixels <= self.max_pixels:
                    batch.append(job)
                    pixels += job.pixels
        for job in batch:
            self.queue.remove(job)
        return batch

    def _loop(self) -> None:
        while True:
            with self.ready:
                while not self.queue and not self.closed:
                    self.ready.wait()
                if not self.queue:
                    return
                batch = self._next_batch()
            self.batches += 1
            self.jobs += len(batch)
            self._answer(batch)

    def _answer(self, batch: list[_Job]) -> None:
        try:
            results = self.run([job.item for job in batch])
        except Exception as err:  # noqa: BLE001 - the job answers with it
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            for job in batch:  # one job's failure (or the batch's size) must not fail the others: each alone
                self._answer([job])
        else:
            for job, result in zip(batch, results):
                job.future.set_result(result)


@dataclass
class ServedModel:
    """The model behind the server, its checkpoint ``info`` and the limits of what it takes."""

    model: object
    info: dict
    max_upload_bytes: int
    max_pixels: int
    tile_above: int
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        from segforge.inference.files import mask_format, stored_label_map

        self.device = next(self.model.parameters(), torch.empty(0)).device  # an ONNX Runtime model: the CPU
        self.batcher = Batcher(self._run, max_batch=self.max_batch, max_pixels=self.tile_above)
        classes = max(self.model.num_classes, 2)
        self.classes = list(self.info.get("classes") or [f"class_{i}" for i in range(classes)])
        # the masks come out as segforge predict writes them: as the training masks were stored
        palette, self.stored, self.mask_palette = mask_format(self.info, classes, stored_label_map(self.info))
        self.palette = [tuple(int(v) for v in colour) for colour in palette]
        largest = classes - 1 if self.stored is None else int(self.stored.max())
        self.palette_mask = largest < 256 and len(self.mask_palette) <= 256  # else a 16-bit grey PNG

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
            "max_batch": self.max_batch,
            "mask_png": "palette" if self.palette_mask else "16-bit",
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
            except DatasetError as err:
                reason = str(err).replace(str(path), repr(filename))
                raise RequestError(
                    415,
                    f"the upload {filename!r} is not an image segforge reads ({reason}): send a PNG, JPEG, TIFF, "
                    "BMP, GIF, PPM/PGM or WebP file",
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

    def submit(self, image: np.ndarray) -> Future:
        """The future ``(H, W)`` class of every pixel (``Batcher``: images of one size may share a batch). The
        image is scaled and normalised here, in the caller's thread, and the network thread only runs networks."""
        from segforge.inference.image import image_tensor

        x = image_tensor(image, self.info, self.model.in_channels)
        pixels = x.shape[-2] * x.shape[-1]
        return self.batcher.submit(x, key=None if pixels > self.tile_above else tuple(x.shape), pixels=pixels)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The ``(H, W)`` class of every pixel (blocks until the network has run it)."""
        return self.submit(image).result()

    def _run(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        """The masks of normalised ``(C, H, W)`` images of one size, as one batch; one over ``tile_above`` pixels
        tile by tile."""
        from segforge.inference.image import image_probabilities
        from segforge.inference.memory import check_fits, out_of_memory_hint
        from segforge.inference.probabilities import predict_probabilities
        from segforge.metrics import logits_to_labels

        height, width = images[0].shape[-2:]
        what = f"{len(images)} image(s) of {width}x{height}"
        if len(images) == 1 and height * width > self.tile_above:
            probabilities = image_probabilities(self.model, images[0], what, device=self.device, tile=TILE)
            return [logits_to_labels(probabilities[None])[0].numpy()]
        x = torch.stack(images)
        check_fits(self.model, tuple(x.shape), self.device, what)
        with out_of_memory_hint(what):
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)  # as segforge predict runs it
            probabilities = predict_probabilities(self.model, x)
        return list(logits_to_labels(probabilities).cpu().numpy())

    def mask_png(self, labels: np.ndarray) -> bytes:
        """The mask PNG ``segforge predict`` writes: a palette PNG (16-bit grey beyond 256 values) of the classes,
        or of the raw values the training masks stored them as (the checkpoint's label map)."""
        return _png(index_picture(labels if self.stored is None else self.stored[labels], self.mask_palette))

    def image_png(self, image: np.ndarray) -> bytes:
        """The image as shown (``display_rgb``), as a PNG."""
        return _png(Image.fromarray(display_rgb(scale_image(image))))

    def overlay_png(self, image: np.ndarray, labels: np.ndarray, opacity: float = 0.5) -> bytes:
        return _png(Image.fromarray(blend(display_rgb(scale_image(image)), labels, self.palette, opacity)))

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


def load_served(
    checkpoint: str | Path, *, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH, **limits
) -> ServedModel:
    """The model of a checkpoint (``.safetensors``) or an exported ``.onnx`` file, ready to serve.

    Raises:
        ValueError: an unreadable checkpoint, or an instance or time-series model (not served yet).
    """
    from segforge.inference.loading import load_for_inference

    model, info = load_for_inference(checkpoint, "auto", device)  # as segforge predict runs it
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
        max_batch=max_batch,
    )


class _UploadLimit:
    """ASGI middleware: a POST whose ``Content-Length``, or whose body as received, is over ``limit`` bytes gets
    its 413 at once, before the rest of the body is read and spooled to disk."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app, limit: int, message: str) -> None:
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        received, over, refused = 0, False, False

        async def counted():
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                over = True
                raise self._TooLarge
            return message

        async def sending(message):  # once over, the app's answer (FastAPI's 400 for a body it could not parse) is
            nonlocal refused  # replaced by the 413
            if not over:
                return await send(message)
            if not refused:
                refused = True
                await self._refuse(scope, receive, send)

        try:
            await self.app(scope, counted, sending)
        except self._TooLarge:
            if not refused:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = JSONResponse({"detail": self.message}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def page() -> str:
    """The web page served at ``/`` (``segforge/serve_page.html``)."""
    return resources.files("segforge").joinpath("serve_page.html").read_text(encoding="utf-8")


def create_app(served: ServedModel):
    """The FastAPI application of ``served`` (see the module docstring)."""

    @asynccontextmanager
    async def lifespan(_):
        yield
        await run_in_threadpool(served.batcher.close)  # the queued requests are answered first
        batcher = served.batcher
        if batcher.batches:
            print(
                f"segforge serve: {batcher.jobs} image(s) in {batcher.batches} pass(es) of the network "
                f"(mean batch {batcher.jobs / batcher.batches:.2f})",
                file=sys.stderr,
            )

    app = FastAPI(title="segforge", description="Semantic segmentation of uploaded images", lifespan=lifespan)
    app.add_middleware(
        _UploadLimit,
        limit=served.max_upload_bytes + MULTIPART_ALLOWANCE,
        message=f"the upload is over this server's {served.max_upload_bytes / 1e6:.1f} MB (segforge serve "
        "--max-upload-mb)",
    )

    @app.exception_handler(RequestError)
    async def _refused(_, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return served.describe()

    @app.post("/predict")
    async def predict(
        image: Annotated[UploadFile, File(description="an image file (PNG, JPEG, TIFF, ...)")],
        output: Annotated[
            Literal["mask", "json", "overlay", "image"],
            Query(
                description="mask: palette PNG of the classes; json: class shares; overlay: PNG of the "
                "prediction over the image; image: the upload as an 8-bit RGB PNG (no prediction)"
            ),
        ] = "mask",
        opacity: Annotated[float, Query(ge=0, le=1, description="the overlay's opacity")] = 0.5,
    ) -> Response:
        data = await image.read(served.max_upload_bytes + 1)
        array = await run_in_threadpool(served.read, data, image.filename or "")
        if output == "image":
            return Response(await run_in_threadpool(served.image_png, array), media_type="image/png")
        labels = await asyncio.wrap_future(await run_in_threadpool(served.submit, array))
        shares = served.shares(labels)
        if output == "json":
            return JSONResponse(shares)
        if output == "mask":
            body = await run_in_threadpool(served.mask_png, labels)
        else:
            body = await run_in_threadpool(served.overlay_png, array, labels, opacity)
        return Response(body, media_type="image/png", headers={"X-Class-Shares": json.dumps(shares["shares"])})

    return app


def serve(
    checkpoint: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    max_batch: int = DEFAULT_MAX_BATCH,
    **limits,
) -> None:
    """Loads the model and serves it until stopped (Ctrl-C)."""
    import uvicorn

    cap_malloc_arenas()  # request threads would each keep an arena of freed image buffers
    app = create_app(load_served(checkpoint, device=device, max_batch=max_batch, **limits))
    uvicorn.run(app, host=host, port=port, log_level="info")
