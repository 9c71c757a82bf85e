"""Batches prepared ahead of the training step: preprocessing off the critical path.

The exported preprocessing (``preprocess.onnx``, shared with serving) turns each data batch's uint8 images and
raw numbers into model inputs. Run inline, it stalls every step (33 ms per 224 px batch of 64 on one thread,
then a pageable host-to-device copy). :class:`BatchPreparer` splits the work in two halves:

- :meth:`BatchPreparer.host` (a background thread, ``depth`` batches ahead): the preprocessor, torch tensors,
  pinned memory on CUDA;
- :meth:`BatchPreparer.to_device` (the training thread): asynchronous copies to the device.

:meth:`BatchPreparer.stream` joins them; the time ``next()`` on it blocks is the step's data wait.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

Preprocess = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(uint8 NHWC images, raw numeric) -> (float32 NCHW pixel values, standardised numeric)."""

PASSED_THROUGH = ("input_ids", "attention_mask", "modality_mask", "label", "valid")


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's ``limits.cpu``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def preprocess_threads(cpus: int, local_ranks: int) -> int:
    """onnxruntime threads per rank: the node's CPUs shared among the ranks on it (not torch's thread count,
    which torchrun sets to 1)."""
    return max(1, cpus // max(1, local_ranks))


class BatchPreparer:
    """Data batch (CPU torch tensors, raw uint8 images and numbers) -> model inputs on ``device``."""

    def __init__(self, preprocess: Preprocess, device: torch.device, *, depth: int = 2):
        self.preprocess, self.device, self.depth = preprocess, device, depth
        self.pin = device.type == "cuda"

    def host(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixel_values, numeric = self.preprocess(batch["image"].numpy(), batch["numeric"].numpy())
        ready = {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values)),
                 "numeric": torch.from_numpy(np.ascontiguousarray(numeric)),
                 **{key: batch[key] for key in PASSED_THROUGH}}
        # Pinned memory lets the copy to the GPU run asynchronously (and at full bus speed).
        return {k: v.pin_memory() for k, v in ready.items()} if self.pin else ready

    def to_device(self, ready: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in ready.items()}

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.to_device(self.host(batch))

    def stream(self, batches: Iterable[dict]) -> "Prefetched":
        """Model inputs for ``batches``, prepared ``depth`` batches ahead on a background thread."""
        return Prefetched(batches, self.host, self.to_device, self.depth)


_END = object()


class Prefetched(Iterator[dict]):
    """Iterates ``finish(produce(batch))`` for ``batches``; ``produce`` runs ahead on a daemon thread.

    An exception in the thread (a corrupt image, a preprocessing failure) is re-raised by ``next()``.
    :meth:`close` (also on garbage collection and at the end) stops the thread."""

    def __init__(self, batches: Iterable[dict], produce: Callable[[dict], Any], finish: Callable[[Any], dict],
                 depth: int):
        self._finish = finish
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iter(batches), produce), daemon=True,
                                        name="kubefusion-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[dict], produce: Callable[[dict], Any]) -> None:
        try:
            for batch in batches:
                if not self._put(produce(batch)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it where the step can report it
            self._put(exc)

    def __next__(self) -> dict:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return self._finish(item)

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._thread.join(timeout=10)

    def __del__(self) -> None:
        self._stop.set()
