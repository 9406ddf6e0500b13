"""The model store: reads models/, validates manifests, verifies sha256s."""

from service.store.store import ModelEntry, ModelStore, StoreError

__all__ = ["ModelEntry", "ModelStore", "StoreError"]
