"""Model control shared by the REST and gRPC adapters (which may not import each other): who may load and
unload models (GENSERVE_ADMIN_KEYS_FILE), which store model a request names, and the version a request is pinned
to for its whole run. The routes are in service/api/repository.py and service/grpc/inference.py."""

import json
from pathlib import Path
from typing import Any

from service.credentials import ApiKeys, CredentialsError
from service.engine.errors import UnknownModel
from service.settings import Settings
from service.store import is_version_number


class AdminKeys:
    """The keys of settings.admin_keys_file, read once; problem() says why a caller may not manage models."""

    def __init__(self, settings: Settings) -> None:
        self.keys: ApiKeys | None = None
        if settings.admin_keys_file is not None:
            try:
                self.keys = ApiKeys.from_file(settings.admin_keys_file)
            except CredentialsError as e:
                raise CredentialsError(str(e).replace("GENSERVE_API_KEYS_FILE", "GENSERVE_ADMIN_KEYS_FILE")) from None

    def problem(self, authorization: str | bytes | None) -> str | None:
        """None when `authorization` holds an admin key; else the reason (for 403, gRPC PERMISSION_DENIED)."""
        if self.keys is None:
            return "authorization: model control is off; set GENSERVE_ADMIN_KEYS_FILE to load and unload models"
        if not self.keys.admits(authorization):
            return "authorization: loading and unloading models needs 'Authorization: Bearer <admin key>'"
        return None


def store_model(engine: Any, name: str) -> str:
    """The store's model a repository request names: "pixelcnn", or a V2 model of it ("pixelcnn.log_prob": a
    function that a manifest of the model in the store defines; not "pixelcnn.nope" nor "pixelcnn.")."""
    names = engine.store.model_names()
    if name in names:
        return name
    model, _, function = name.rpartition(".")
    if model not in names:
        raise UnknownModel(f"model_name: no model {name!r} in the store; it holds {names}", field="model_name")
    functions = stored_functions(engine.store.root / model)
    if function not in functions:
        raise UnknownModel(f"model_name: no V2 model {name!r} in the store; model {model!r} has the functions "
                           f"{sorted(functions)}", field="model_name")
    return model


def stored_functions(model_directory: Path) -> set[str]:
    """The functions that the manifests of a model's versions define, read as they are (a manifest the load refuses
    adds none; the load says why)."""
    functions: set[str] = set()
    for path in model_directory.glob("*/manifest.json"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("functions"), dict):
            functions.update(manifest["functions"])
    return functions


async def load(engine: Any, name: str) -> list[int]:
    """Load a model's versions (hashing its files off the event loop)."""
    return await engine.load(store_model(engine, name))


def unload(engine: Any, name: str) -> None:
    model = store_model(engine, name)
    if model not in engine.versions:  # in the store, but not served (unloaded already, or never loaded)
        raise UnknownModel(f"model_name: model {model!r} is not served; load it first", field="model_name")
    engine.unload_model(model)


def latest_pin(engine: Any, model: str) -> tuple[str, int] | None:
    """(model, its latest version) while it is served: a request pinned so at its start runs on one version to its
    end, and its answer's `version` is the version that computed it, even when a load lands meanwhile."""
    served = getattr(engine, "versions", {}).get(model)
    return (model, max(served)) if served else None


def v2_pin(engine: Any, v2_name: str, version: str | None) -> tuple[str, int] | None:
    """(model, version) to pin for a V2 request naming "<model>.<function>": the version it names when that
    version is served (else None: the V2 adapter's own check answers), or the latest when it names none."""
    model = v2_name.rpartition(".")[0]
    if not version:
        return latest_pin(engine, model)
    served = getattr(engine, "versions", {}).get(model, {})
    return (model, int(version)) if is_version_number(version) and int(version) in served else None
