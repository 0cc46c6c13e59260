"""``segforge serve`` under load, on this machine only: N concurrent clients send a fixed number of requests.

    PYTHONPATH=. .venv/bin/python bench/serve_load.py                                # the README's table
    PYTHONPATH=. .venv/bin/python bench/serve_load.py --requests 40 --clients 4      # a quick look

A real ``segforge serve`` process on 127.0.0.1 (nothing else is ever addressed), for each ``--max-batch``
value one after the other in one run, serves ``--arch`` (random weights: the network's work is that of a
trained one) saved as a checkpoint. ``--clients`` threads, each on its own keep-alive connection, send
``--requests`` uploads in all of ``--size``-pixel PNG images (each client its own images), as fast as the
answers come, and check each answer: a 200 with a PNG mask of the image's size; anything else is an error.
After ``--warmup`` requests from each client (the first passes of each batch size allocate memory), the
server's resident memory (``VmRSS`` of ``/proc/PID/status``) is read before the loads and after each of
``--loads`` equal loads: a leak would show as growth from load to load. (A batch of a size or shape not seen
before still allocates on its first pass, so the first load may grow a little.) The run is bounded: every
request has a 120 s time-out and each load ``--deadline`` seconds; the server is stopped at the end whatever
happened.

Throughput is answered requests per second of wall time over all loads (and the network's GFLOP/s at that rate:
its FLOPs per image, ``segforge.summary``'s count, times the rate); latency is each request's time from
sending to the whole answer read, p50 and p99 over all loads. The server's batches (mean images per pass of
the network) are read from its log line at shutdown.

Prints a markdown table; writes ``--out`` (default ``bench/results/serve/serve_load.json``).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segforge.checkpoint import save_checkpoint
from segforge.models import create_model
from segforge.summary import summarize

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="tile.png"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """``segforge serve`` as a process on a free port of 127.0.0.1."""

    def __init__(self, checkpoint: Path, max_batch: int, device: str) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "segforge", "serve", "--checkpoint", str(checkpoint)]
        command += ["--port", str(self.port), "--max-batch", str(max_batch), "--device", device]
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"segforge serve did not start: {self.output()[-2000:]}")
            time.sleep(0.3)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self.output()


def load(port: int, bodies: list[list[tuple[bytes, str]]], size: tuple[int, int], deadline: float) -> dict:
    """Each client sends its bodies in turn on one connection; latencies and errors of all."""
    latencies, errors, lock = [], [], threading.Lock()

    def client(mine: list[tuple[bytes, str]]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for body, kind in mine:
            if time.monotonic() > deadline:
                with lock:
                    errors.append("deadline passed before the request was sent")
                continue
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body, headers={"Content-Type": kind})
                answer = connection.getresponse()
                data = answer.read()
                ok = answer.status == 200 and Image.open(io.BytesIO(data)).size == size
                problem = None if ok else f"{answer.status}: {data[:200]!r}"
            except Exception as err:  # noqa: BLE001 - every failure counts as an error of the load
                problem = f"{type(err).__name__}: {err}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed))
        connection.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in bodies]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.perf_counter() - start, "latencies": latencies, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet_padded")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per load")
    parser.add_argument("--loads", type=int, default=3, help="equal loads, one after the other, per setting")
    parser.add_argument("--warmup", type=int, default=4, help="requests per client before the loads")
    parser.add_argument("--max-batch", type=int, nargs="+", default=(1, 4, 8))
    parser.add_argument("--device", default="cpu", help="where the server runs the network (cpu, cuda)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve" / "serve_load.json"))
    parser.add_argument("--deadline", type=float, default=600, help="seconds per load")
    args = parser.parse_args()

    torch.manual_seed(0)
    height, width = args.size
    model = create_model(args.arch, args.classes, encoder=args.encoder)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.clients)]
    bodies = [multipart(png(image)) for image in images]
    per_client = [[bodies[c]] * (args.requests // args.clients) for c in range(args.clients)]
    for c in range(args.requests % args.clients):
        per_client[c].append(bodies[c])
    # the network's FLOPs per image (convolutions and matrix products, segforge.summary's count; square sizes)
    gflop = summarize(args.arch, height, num_classes=args.classes, encoder=args.encoder).flops / 1e9
    gflop = gflop if height == width else None
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_checkpoint(Path(folder) / "model.safetensors", model, classes=list(range(args.classes)))
        for max_batch in args.max_batch:
            print(f"max_batch {max_batch}: starting the server", file=sys.stderr)
            server = Server(checkpoint, max_batch, args.device)
            try:
                warming = [[body] * args.warmup for body in bodies]  # every batch size the load will see, once
                warm = load(server.port, warming, (width, height), time.monotonic() + 300)
                assert not warm["errors"], warm["errors"][:3]
                memory = [rss_mb(server.process.pid)]
                loads = []
                for _ in range(args.loads):
                    loads.append(load(server.port, per_client, (width, height), time.monotonic() + args.deadline))
                    memory.append(rss_mb(server.process.pid))
            finally:
                log = server.stop()
            batches = [line for line in log.splitlines() if "mean batch" in line]
            latencies = np.array([t for one in loads for t in one["latencies"]]) * 1000
            errors = [e for one in loads for e in one["errors"]]
            row = {
                "max_batch": max_batch,
                "requests": args.loads * args.requests,
                "errors": len(errors),
                "error_examples": errors[:3],
                "throughput_rps": sum(len(one["latencies"]) for one in loads) / sum(one["wall_s"] for one in loads),
                "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
                "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
                "rss_mb": memory,
                "server_batches": batches[-1].strip() if batches else None,
            }
            if gflop is not None:  # what the network achieved at the answered rate
                row["network_gflop_per_s"] = gflop * row["throughput_rps"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)

    setting = {key: value for key, value in vars(args).items()}
    setting["torch_threads"] = torch.get_num_threads()
    setting["network_gflop_per_image"] = gflop
    setting["machine"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs"
    out = Path(args.out)
    out.write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n")
    print(
        f"{args.arch} ({args.encoder}) on {setting['machine']}, {height}x{width} PNG uploads, {args.clients} clients, "
        f"{args.requests} requests per load, {args.loads} loads; the network: "
        f"{'-' if gflop is None else f'{gflop:.1f}'} GFLOP per image\n"
    )
    print(
        "| --max-batch | requests | errors | throughput (req/s) | network GFLOP/s | p50 (ms) | p99 (ms) "
        "| server RSS before → after each load (MB) | batches |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        memory = " → ".join(f"{mb:.0f}" for mb in row["rss_mb"])
        print(
            f"| {row['max_batch']} | {row['requests']} | {row['errors']} | {row['throughput_rps']:.1f} | "
            f"{row.get('network_gflop_per_s', float('nan')):.0f} | "
            f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {memory} | {row['server_batches'] or '-'} |"
        )


if __name__ == "__main__":
    main()
