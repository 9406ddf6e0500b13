"""The model store: reads models/, validates manifests, verifies sha256s."""

from service.store.store import BadEntry, ModelEntry, ModelStore, StoreError

__all__ = ["BadEntry", "ModelEntry", "ModelStore", "StoreError"]
