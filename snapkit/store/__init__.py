"""The encrypted, deduplicated object store (docs/format.md)."""
