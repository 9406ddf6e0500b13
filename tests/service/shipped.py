"""An in-process Engine over some of the shipped models: a scratch store of links to models/<name>."""

from pathlib import Path

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"


def shipped_engine(tmp_path_factory, names) -> Engine:
    store = tmp_path_factory.mktemp("store")
    for name in names:
        (store / name).symlink_to(MODELS / name)
    return Engine(ModelStore(store), Settings(runtime="onnx", intra_op_threads=1))
