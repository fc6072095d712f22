"""Token caches (being written)."""
