"""Manifests: one sealed object per snapshot, its metadata and per-layer chunk lists.

`manifests/<snapshot-id>`, kind M (docs/format.md, "Manifest"). The payload is
a codec-1 zstd frame of `u32 length || JSON || chunk lists || sketches`: the
JSON holds `id`, `format`, `meta` (the whole snapshot metadata) and `layers`
(per layer: strategy, sizes, chunk count, SHA-256, ...); then 32 bytes per
chunk for the layers in sorted name order; then, for the layers that name
`features`, 8 bytes of similarity sketch per chunk in the same order.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from snapkit.errors import IntegrityError
from snapkit.store import compress, objects
from snapkit.store.chunker import FEATURE_BYTES

ID_BYTES = 32
FOLDER = "manifests"
MAX_PAYLOAD = 1 << 30


def manifest_name(snapshot_id: str) -> str:
    return f"{FOLDER}/{snapshot_id}"


@dataclass
class Manifest:
    id: str
    meta: dict
    layers: dict[str, dict]
    chunk_lists: dict[str, bytes] = field(repr=False, default_factory=dict)
    # cdc layers: FEATURE_BYTES per chunk, in chunk order (similarity sketches for delta bases)
    features: dict[str, bytes] = field(repr=False, default_factory=dict)
    digest: str = ""  # SHA-256 of the stored object, which the catalog entry names

    def chunk_ids(self, layer: str) -> Iterator[bytes]:
        data = self.chunk_lists[layer]
        for off in range(0, len(data), ID_BYTES):
            yield bytes(data[off : off + ID_BYTES])

    def all_chunk_ids(self) -> Iterator[bytes]:
        for layer in sorted(self.chunk_lists):
            yield from self.chunk_ids(layer)


def encode(keys, snapshot_id: str, meta: dict, layers: dict[str, dict], chunk_lists: dict[str, bytes],
           features: dict[str, bytes]) -> bytes:
    """The sealed manifest object for `snapshot_id`."""
    doc = json.dumps({"id": snapshot_id, "format": objects.FORMAT_VERSION,
                      "meta": {**meta, "id": snapshot_id}, "layers": layers}, sort_keys=True).encode()
    lists = b"".join(bytes(chunk_lists[n]) for n in sorted(layers))
    lists += b"".join(bytes(features[n]) for n in sorted(layers) if n in features)
    payload, _ = compress.pack_payload(struct.pack(">I", len(doc)) + doc + lists)
    name = manifest_name(snapshot_id)
    return objects.seal(keys, objects.MANIFEST, name, payload)


def decode(keys, snapshot_id: str, data: bytes) -> Manifest:
    """Open and parse a stored manifest (format 1 or 2); IntegrityError naming it."""
    name = manifest_name(snapshot_id)
    sealed = objects.open_sealed(keys, objects.MANIFEST, name, data)
    try:
        payload = compress.unpack_payload(sealed, MAX_PAYLOAD)
        (n,) = struct.unpack(">I", payload[:4])
        doc = json.loads(payload[4 : 4 + n])
        layers = doc["layers"]
        if doc.get("id") != snapshot_id:
            raise IntegrityError(f"snapshot {snapshot_id}: manifest belongs to {doc.get('id')}")
        lists, feats, pos = {}, {}, 4 + n
        for layer_name, layer in sorted(layers.items()):
            size = layer["chunks"] * ID_BYTES
            lists[layer_name] = payload[pos : pos + size]
            pos += size
        for layer_name, layer in sorted(layers.items()):
            if layer.get("features"):
                size = layer["chunks"] * FEATURE_BYTES
                feats[layer_name] = payload[pos : pos + size]
                pos += size
        if pos != len(payload) or any(len(v) != layers[k]["chunks"] * ID_BYTES for k, v in lists.items()):
            raise IntegrityError(f"snapshot {snapshot_id}: manifest chunk lists do not match its layers")
    except IntegrityError:
        raise
    except Exception:  # an authenticated but malformed payload: only a buggy writer makes one
        raise IntegrityError(f"snapshot {snapshot_id}: manifest is malformed") from None
    return Manifest(doc["id"], doc["meta"], layers, lists, feats, hashlib.sha256(data).hexdigest())
