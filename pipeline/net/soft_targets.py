"""Soft-target cache: a frozen, deterministic teacher's logits computed once per distinct sample.

When the teacher's inputs are the same every epoch (no random crop or mirror on its path), running it again
is wasted work. The cache keys each sample by a hash of its input content (robust to shuffling, batch
wrap-around and any data layer), stores the teacher blob per sample in float16, and on a batch whose
samples are all known skips the teacher layers entirely. A change of data changes the hashes; the cache
lives with the net, so new teacher weights or prototxt mean a new net and a new cache.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from pipeline.errors import NetBuildError

STOCHASTIC_TYPES = {"Dropout"}


class SoftTargetCache:
    def __init__(self, net, blob: str, dtype: torch.dtype = torch.float16):
        self.blob, self.dtype = blob, dtype
        self.layers, self.inputs = self._teacher_subgraph(net, blob)
        self.first_layer = min(self.layers)
        self.rows: dict[bytes, int] = {}
        self.store: torch.Tensor | None = None
        self.hits = self.misses = 0
        self._pending: list[bytes] | None = None

    @staticmethod
    def _teacher_subgraph(net, blob: str) -> tuple[set[int], list[str]]:
        """Indices of the layers that compute `blob` from source/Split tops, and those boundary blobs."""
        producer = {}
        for i, layer in enumerate(net.layers):
            for top in layer.top_names:
                producer.setdefault(top, []).append(i)
        layers, inputs, todo = set(), [], [blob]
        while todo:
            name = todo.pop()
            makers = producer.get(name, [])
            boundary = not makers or any(net.layers[i].is_source or net.layers[i].type_name == "Split" for i in makers)
            if boundary:
                if name not in inputs:
                    inputs.append(name)
                continue
            for i in makers:
                if i in layers:
                    continue
                layer = net.layers[i]
                _check_cacheable(net, layer, blob)
                layers.add(i)
                todo.extend(layer.bottom_names)
        if not layers:
            raise NetBuildError(f"cache_teacher: blob '{blob}' is produced by no teacher layer")
        return layers, inputs

    def keys(self, values: dict[str, torch.Tensor]) -> list[bytes]:
        arrays = [values[name].detach().cpu().numpy() for name in self.inputs]
        n = arrays[0].shape[0]
        keys = []
        for row in range(n):
            digest = hashlib.blake2b(digest_size=16)
            for array in arrays:
                digest.update(np.ascontiguousarray(array[row]).tobytes())
            keys.append(digest.digest())
        return keys

    def lookup(self, values: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The cached teacher blob for this batch if every sample is known, else None (remember the keys)."""
        keys = self.keys(values)
        if self.store is not None and all(k in self.rows for k in keys):
            self.hits += 1
            index = torch.tensor([self.rows[k] for k in keys])
            like = values[self.inputs[0]]
            return self.store[index].to(device=like.device, dtype=like.dtype)
        self.misses += 1
        self._pending = keys
        return None

    def remember(self, teacher_blob: torch.Tensor) -> None:
        keys, self._pending = self._pending, None
        if keys is None:
            return
        data = teacher_blob.detach().to("cpu", self.dtype)
        if self.store is None:
            self.store = torch.empty((0, *data.shape[1:]), dtype=self.dtype)
        new = [(row, k) for row, k in enumerate(keys) if k not in self.rows]
        if not new:
            return
        start = self.store.shape[0]
        self.store = torch.cat([self.store, data[[row for row, _ in new]]])
        for offset, (_, key) in enumerate(new):
            self.rows[key] = start + offset

    def __repr__(self) -> str:
        return f"SoftTargetCache(blob={self.blob!r}, samples={len(self.rows)}, hits={self.hits}, misses={self.misses})"


def _check_cacheable(net, layer, blob: str) -> None:
    why = None
    if any(p.requires_grad for p in layer.parameters()):
        why = "it has trainable parameters (set lr_mult: 0 on the teacher)"
    elif layer.type_name in STOCHASTIC_TYPES and net.phase == 0:
        why = "it is random in the TRAIN phase"
    elif layer.type_name == "BatchNorm" and not getattr(layer, "use_global_stats", True):
        why = "it uses batch statistics (set use_global_stats: true)"
    if why:
        raise NetBuildError(
            f"cache_teacher for '{blob}': teacher layer '{layer.name}' ({layer.type_name}) cannot be cached: {why}"
        )
