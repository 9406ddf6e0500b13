"""Reads models/<name>/<version>/manifest.json and checks every file against it.

A manifest must validate against proto/manifest.schema.json, and every file
it lists must match its sha256; otherwise the store refuses to load and the
error names the file. With skip_bad, a version that fails those checks is left
out instead, as a live load leaves it out: its model is served from its good
versions, and a model with none is kept in `unavailable` with the reason, so
that the rest of the store can be served.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import jsonschema_rs

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")  # a link to proto/'s, a copy in an installed package


class StoreError(Exception):
    """The store cannot be loaded as it is on disk. `kind`, a short word for metrics: sha256, missing, manifest,
    misplaced or store."""

    def __init__(self, message: str, kind: str = "store"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class BadEntry:
    """A version directory that failed its checks: model name and version as its path gives them."""
    name: str
    version: str
    directory: Path
    reason: str
    kind: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: int
    directory: Path
    manifest: dict

    def path(self, filename: str) -> Path:
        return self.directory / filename


@dataclass(frozen=True)
class _Digest:
    key: tuple[int, ...]  # the file's stat key (_stat_key) when it was hashed
    first_seen: float  # time.monotonic() when this process first saw the file with that key
    sha256: str
    settled: bool  # hashed at least SETTLED_S after first_seen: the digest may be reused while the key holds


_DIGESTS: dict[Path, _Digest] = {}
SETTLED_S = 2.0  # longer than any file system's timestamp tick (FAT's 2 s)


def _stat_key(path: Path) -> tuple[int, ...]:
    """What changes when a file's bytes may have: a replaced file (a new inode), a write (size, mtime) and any
    change at all (ctime, which no user can set back)."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _sha256(path: Path) -> str:
    """The file's sha256, not read again while its stat key stays as it was: a store scan (each poll tick, each
    repository index) then reads its files' metadata, not their bytes. File systems stamp times by a clock tick
    (up to 2 s), so a second write within the tick of the first leaves the key as it was: a digest is reused only
    once it was taken at least SETTLED_S after this process first saw the key (by its own clock, whatever the file
    system's clock says), when every write stamped with that key is done (git's "racily clean" entries)."""
    key, now = _stat_key(path), time.monotonic()
    known = _DIGESTS.get(path)
    if known is not None and known.key == key and known.settled:
        return known.sha256
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if _stat_key(path) == key:  # not written while it was read: the digest is of the bytes under that key
        first_seen = known.first_seen if known is not None and known.key == key else now
        _DIGESTS[path] = _Digest(key, first_seen, digest.hexdigest(), now - first_seen >= SETTLED_S)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """A digest of a manifest's content, which holds every file's sha256: the same files under the same manifest
    give the same digest, and a changed file (its sha256 updated) or manifest gives another."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def used_files(manifest: dict) -> list[tuple[str, str]]:
    """(what uses it, file name) of every file the manifest reads: each function's, and a calibration detector's
    (the latent Mahalanobis score's Gaussian, `latent.file`)."""
    used = [(f"function {function!r}", filename) for function, entry in manifest["functions"].items()
            for filename in entry["files"].values()]
    detectors = manifest.get("calibration", {}).get("detectors", {})
    return used + [(f"calibration detector {detector!r}", entry["latent"]["file"])
                   for detector, entry in detectors.items() if "latent" in entry]  # the schema requires its file


def verify_files(directory: Path, manifest: dict) -> None:
    """Every file the manifest reads is listed, and every listed file exists with its recorded sha256."""
    listed = manifest["files"]
    for user, filename in used_files(manifest):
        if filename not in listed:
            raise StoreError(f"{directory}: {user} uses {filename}, which has no sha256 in files", "manifest")
    for filename, expected in listed.items():
        path = directory / filename
        if not path.is_file():
            raise StoreError(f"{path}: listed in the manifest but missing", "missing")
        actual = _sha256(path)
        if actual != expected:
            raise StoreError(f"{path}: sha256 {actual} does not match the manifest's {expected}; refusing to load",
                             "sha256")


def named_functions(capability: dict) -> list[str]:
    """Every function a capability entry names: its own, a conditional one, refinement rules' (nested)."""
    names = [capability[key] for key in ("function", "conditional_function") if isinstance(capability.get(key), str)]
    for value in capability.values():
        if isinstance(value, dict):
            names += named_functions(value)
    return names


def check_references(directory: Path, manifest: dict) -> None:
    """Every function a capability names is one of the manifest's functions: an exporter's slip fails at load."""
    for capability, entry in manifest["capabilities"].items():
        for function in named_functions(entry):
            if function not in manifest["functions"]:
                raise StoreError(f"{directory}: capability {capability!r} names function {function!r}, which the "
                                 f"manifest does not define (it has {sorted(manifest['functions'])})", "manifest")


def manifest_validator(schema: dict | None = None) -> jsonschema.protocols.Validator:
    """The manifest schema's validator, the schema itself checked once (jsonschema.validate checks it on every call:
    two thirds of a store's load time at 30 models)."""
    schema = json.loads(SCHEMA_PATH.read_text()) if schema is None else schema
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


class ManifestSchema:
    """proto/manifest.schema.json as the store checks manifests with it: jsonschema-rs (compiled: 4 ms for the 30
    shipped manifests where jsonschema takes 1.7 s) says whether a manifest is valid, and only for one it refuses
    does jsonschema find the most relevant error, to name it; a manifest text that passed is remembered by its
    sha256 and not validated again (a store rescan, the repository index, the poll)."""

    def __init__(self) -> None:
        schema = json.loads(SCHEMA_PATH.read_text())
        self.reference = manifest_validator(schema)
        self.fast = jsonschema_rs.validator_for(schema)
        self.passed: set[bytes] = set()

    def check(self, text: bytes, manifest: dict) -> None:
        """Raise the manifest's most relevant jsonschema.ValidationError, if it has one (`text`: its bytes)."""
        digest = hashlib.sha256(text).digest()
        if digest in self.passed:
            return
        if not self.fast.is_valid(manifest):
            if (error := jsonschema.exceptions.best_match(self.reference.iter_errors(manifest))) is not None:
                raise error  # the most relevant error, as jsonschema.validate picks it
        self.passed.add(digest)


def load_entry(directory: Path, schema: ManifestSchema) -> ModelEntry:
    manifest_path = directory / "manifest.json"
    try:
        text = manifest_path.read_bytes()
        manifest = json.loads(text.decode())  # UTF-8, as the workers read it (json.loads(bytes) would take a BOM)
        schema.check(text, manifest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, jsonschema.ValidationError) as e:
        raise StoreError(f"{manifest_path}: invalid manifest: {getattr(e, 'message', e)}", "manifest") from e
    if manifest["name"] != directory.parent.name or str(manifest["version"]) != directory.name:
        raise StoreError(f"{manifest_path}: says {manifest['name']}/{manifest['version']}, but lies in "
                         f"{directory.parent.name}/{directory.name}", "misplaced")
    check_references(directory, manifest)
    verify_files(directory, manifest)
    return ModelEntry(manifest["name"], manifest["version"], directory, manifest)


def is_version_number(name: str) -> bool:
    """A version named by digits 0-9 alone (str.isdigit also takes "²", which int() refuses), at most 18 of them
    after leading zeros: an int64, far below the 4,300 digits where int() gives up."""
    return name.isascii() and name.isdigit() and len(name.lstrip("0")) <= 18


def _version_key(directory: Path) -> tuple[int, int | str]:
    """Numbered versions order by number, after any directory whose name is not a number."""
    return (1, int(directory.name)) if is_version_number(directory.name) else (0, directory.name)


class ModelStore:
    """The latest version of every model under `root`, verified at load time; `versions` holds every good
    version of each (name -> version -> entry), and scan_model() reads one model's directory again.

    A version that fails its checks stops the load (StoreError), unless `skip_bad`: then it is kept in `bad` and
    its model is served from its good versions (the newest good one on the unversioned routes), as a live load
    (Engine.load_model) serves it; a model with no good version is listed in `unavailable` (name -> its latest
    BadEntry), so that the rest of the store can be served.
    """

    def __init__(self, root: Path, skip_bad: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StoreError(f"model store {self.root} is not a directory")
        self.schema = ManifestSchema()
        self.entries: dict[str, ModelEntry] = {}
        self.versions: dict[str, dict[int, ModelEntry]] = {}
        self.bad: list[BadEntry] = []
        for manifest_path in sorted(self.root.glob("*/*/manifest.json")):
            directory = manifest_path.parent
            name = directory.parent.name
            try:
                entry = load_entry(directory, self.schema)
            except StoreError as e:
                if not skip_bad:
                    raise
                self.bad.append(BadEntry(name, directory.name, directory, str(e), e.kind))
                continue
            self.versions.setdefault(entry.name, {})[entry.version] = entry
            current = self.entries.get(entry.name)
            if current is None or entry.version > current.version:
                self.entries[entry.name] = entry
        self.unavailable = {bad.name: bad for bad in sorted(self.bad, key=lambda b: _version_key(b.directory))
                            if bad.name not in self.entries}  # the latest bad version stands for the model

    def model_names(self) -> list[str]:
        """Every model directory on disk now, served or not."""
        return sorted({p.parent.parent.name for p in self.root.glob("*/*/manifest.json")})

    def scan_model(self, name: str) -> tuple[dict[int, ModelEntry], list[BadEntry]]:
        """Read models/<name>/ again as it is on disk now: its good versions (version -> entry) and its bad ones.
        A name that is no model directory of the store (e.g. "..") has neither."""
        if name not in self.model_names():
            return {}, []
        good: dict[int, ModelEntry] = {}
        bad: list[BadEntry] = []
        for manifest_path in sorted((self.root / name).glob("*/manifest.json"), key=lambda p: _version_key(p.parent)):
            try:
                entry = load_entry(manifest_path.parent, self.schema)
            except StoreError as e:
                bad.append(BadEntry(name, manifest_path.parent.name, manifest_path.parent, str(e), e.kind))
                continue
            good[entry.version] = entry
        return good, bad

    def names(self) -> list[str]:
        return sorted(self.entries)

    def unavailable_models(self) -> list[dict]:
        """The models left out (skip_bad), as /v1/models lists them: name, version, available false, reason."""
        return [{"name": b.name, "version": b.version, "available": False, "reason": b.reason}
                for b in sorted(self.unavailable.values(), key=lambda b: b.name)]

    def register_metrics(self, registry, unsupported: list[dict] = ()) -> None:
        """genserve_model_unavailable{model, version, reason} = 1 for each model left out, in a Prometheus
        registry (the engine's, which /metrics renders); reason is short: sha256, missing, manifest, misplaced, or
        unsupported for each of `unsupported` (the engine's unavailable entries of models whose every version
        passed the store's checks but that the engine cannot serve)."""
        from prometheus_client import Gauge

        gauge = Gauge("genserve_model_unavailable", "Models in the store not served because they failed their "
                      "checks (GENSERVE_SKIP_BAD_MODELS), 1 each", ("model", "version", "reason"), registry=registry)
        for bad in self.unavailable.values():
            gauge.labels(bad.name, bad.version, bad.kind).set(1)
        for model in unsupported:
            gauge.labels(model["name"], model["version"], "unsupported").set(1)

    def empty_reason(self) -> str:
        """Why a store with no model looks wrong: what `root` looks like instead (a model, a version, a training
        run, a runs directory), or that it holds no <name>/<version>/manifest.json."""
        return describe_store_path(self.root)


def _is_run(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def describe_store_path(root: Path) -> str:
    """What a directory that holds no <name>/<version>/manifest.json looks like, with the store to give instead."""
    root = Path(root)
    if (root / "manifest.json").is_file():
        return (f"{root} is a model version directory (it holds manifest.json), not a store; the store is two "
                f"levels up: --models {root.parent.parent}")
    if any(root.glob("*/manifest.json")):
        return (f"{root} is a model directory (<version>/manifest.json under it), not a store; the store is one "
                f"level up: --models {root.parent}")
    inner = sorted({m.parents[2] for m in root.glob("*/*/*/manifest.json")})
    if inner:
        return f"{root} holds no model itself, but {', '.join(map(str, inner))} does: --models {inner[0]}"
    if _is_run(root):
        return f"{root} is a training run, not a store; export it first: genserve export {root} --models <store>"
    if any(_is_run(d) for d in root.iterdir() if d.is_dir()):
        return (f"{root} holds training runs, not exported models; export one first: genserve export "
                f"{root}/<run> --models <store>")
    if not any(root.iterdir()):
        return f"{root} is empty: no <name>/<version>/manifest.json under it"
    return f"{root} holds no model: no <name>/<version>/manifest.json under it"
