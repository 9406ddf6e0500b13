"""The model store: reads models/, validates manifests, verifies sha256s."""

from service.store.store import BadEntry, ModelEntry, ModelStore, StoreError, is_version_number

__all__ = ["BadEntry", "ModelEntry", "ModelStore", "StoreError", "is_version_number"]
