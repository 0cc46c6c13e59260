"""keep_freed_memory: freed large blocks are reused instead of page-faulted in again; and data-loader workers
forked after OpenCV ran threaded in the training process do not hang."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MiB tensor 20 times; prints the minor page faults this took.
_CHILD = """
import resource, sys, torch
from segforge.runtime import keep_freed_memory
applied = keep_freed_memory()
torch.empty(16 * 2**20).fill_(1.0)  # first use: faults the pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 * 2**20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: str) -> tuple[str, int]:
    env = {**os.environ, "SEGFORGE_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's: elsewhere keep_freed_memory does nothing and says so",
)
@pytest.mark.slow  # 6 s
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    applied, kept = _faults("1")
    opted_out, released = _faults("0")
    assert (applied, opted_out) == ("True", "False")
    pages = 20 * 64 * 2**20 // 4096  # what 20 fresh 64 MiB blocks fault in
    # without: every block faults in again; with: only while the heap first grows to fit them (0-2 blocks)
    assert released > pages // 2 and kept < pages // 4, (released, kept)


# 8 threads that allocate at once, then the number of malloc arenas glibc's malloc_info reports
_ARENAS = """
import ctypes, os, re, sys, tempfile, threading
if sys.argv[1] == "1":
    from segforge.runtime import cap_malloc_arenas
    applied = cap_malloc_arenas()
else:
    applied = False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.fdopen.restype, libc.fclose.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
together = threading.Barrier(8)
def work():
    together.wait()
    blocks = [libc.malloc(4096) for _ in range(1000)]
    together.wait()
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
with tempfile.TemporaryFile() as report:
    stream = libc.fdopen(os.dup(report.fileno()), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    report.seek(0)
    print(applied, len(re.findall(rb"<heap nr=", report.read())))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's: elsewhere cap_malloc_arenas does nothing and says so",
)
def test_capped_malloc_arenas_stay_two_however_many_threads_allocate(monkeypatch) -> None:
    from segforge.runtime import cap_malloc_arenas

    def arenas(cap: str) -> tuple[str, int]:
        environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        out = subprocess.run(
            [sys.executable, "-c", _ARENAS, cap], env=environment, capture_output=True, text=True, check=True
        )
        applied, count = out.stdout.split()
        return applied, int(count)

    assert arenas("1") == ("True", 2)
    applied, uncapped = arenas("0")
    assert applied == "False" and uncapped > 2  # one arena per thread that allocated at once, up to 8 per core
    monkeypatch.setenv("MALLOC_ARENA_MAX", "3")
    assert cap_malloc_arenas() is False  # the environment's setting wins


# OpenCV's pool started in this process (as loading in it does), then a run whose loader forks a worker
_FORK_AFTER_OPENCV = """
import sys, cv2, numpy as np
from segforge.cli import main
from segforge.data.synthetic import write_synthetic_dataset
cv2.setNumThreads(2)
image = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
for _ in range(3):
    cv2.warpAffine(image, np.eye(2, 3), (1500, 1500))
data = write_synthetic_dataset(sys.argv[1] + "/data", num_train=4, num_val=2, size=32)
raise SystemExit(main(["train", "--data", str(data), "--iterations", "2", "--workers", "1",
                       "--model", "unet_padded", "--encoder", "unet16", "--out", sys.argv[1] + "/runs"]))
"""


@pytest.mark.slow  # 7-9 s: a real training process with a forked loader worker
def test_a_loader_worker_forked_after_opencv_ran_threaded_does_not_hang(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_OPENCV, str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert any((tmp_path / "runs").glob("*/last.safetensors"))
