"""MemoryBackend passes the backend contract."""

from __future__ import annotations

import pytest

from snapkit.backends.memory import MemoryBackend
from tests.backends.contract import BackendContract


@pytest.fixture
def backend():
    return MemoryBackend()


@pytest.fixture
def make_read_only():
    def make(be: MemoryBackend) -> MemoryBackend:
        be.read_only = True
        return be

    return make


class TestMemoryBackend(BackendContract):
    def test_describe_names_the_instance(self):
        a, b = MemoryBackend(), MemoryBackend()
        assert a.describe().startswith("memory:") and a.describe() != b.describe()

    def test_read_only_from_the_start(self):
        be = MemoryBackend(read_only=True)
        assert be.list("") == []
        from snapkit.backends.base import ReadOnlyStore

        with pytest.raises(ReadOnlyStore):
            be.put("config", b"{}")

    def test_put_copies_a_mutable_buffer(self):
        be = MemoryBackend()
        buf = bytearray(b"abc")
        be.put("index/a", buf)
        buf[0] = ord("X")
        assert be.get("index/a") == b"abc"
