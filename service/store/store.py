"""Reads models/<name>/<version>/manifest.json and checks every file against it.

A manifest must validate against proto/manifest.schema.json, and every file
it lists must match its sha256; otherwise the store refuses to load and the
error names the file.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "proto" / "manifest.schema.json"


class StoreError(Exception):
    """The store cannot be loaded as it is on disk."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: int
    directory: Path
    manifest: dict

    def path(self, filename: str) -> Path:
        return self.directory / filename


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(directory: Path, manifest: dict) -> None:
    """Every function file is listed, and every listed file exists with its recorded sha256."""
    listed = manifest["files"]
    for function, entry in manifest["functions"].items():
        for filename in entry["files"].values():
            if filename not in listed:
                raise StoreError(f"{directory}: function {function!r} uses {filename}, which has no sha256 in files")
    for filename, expected in listed.items():
        path = directory / filename
        if not path.is_file():
            raise StoreError(f"{path}: listed in the manifest but missing")
        actual = _sha256(path)
        if actual != expected:
            raise StoreError(f"{path}: sha256 {actual} does not match the manifest's {expected}; refusing to load")


def load_entry(directory: Path, schema: dict) -> ModelEntry:
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        jsonschema.validate(manifest, schema)
    except (json.JSONDecodeError, jsonschema.ValidationError) as e:
        raise StoreError(f"{manifest_path}: invalid manifest: {getattr(e, 'message', e)}") from e
    if manifest["name"] != directory.parent.name or str(manifest["version"]) != directory.name:
        raise StoreError(f"{manifest_path}: says {manifest['name']}/{manifest['version']}, but lies in "
                         f"{directory.parent.name}/{directory.name}")
    verify_files(directory, manifest)
    return ModelEntry(manifest["name"], manifest["version"], directory, manifest)


class ModelStore:
    """The latest version of every model under `root`, verified at load time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StoreError(f"model store {self.root} is not a directory")
        schema = json.loads(SCHEMA_PATH.read_text())
        self.entries: dict[str, ModelEntry] = {}
        for manifest_path in sorted(self.root.glob("*/*/manifest.json")):
            entry = load_entry(manifest_path.parent, schema)
            current = self.entries.get(entry.name)
            if current is None or entry.version > current.version:
                self.entries[entry.name] = entry

    def names(self) -> list[str]:
        return sorted(self.entries)
