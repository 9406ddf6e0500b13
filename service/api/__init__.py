"""REST (FastAPI) adapter over the engine: `create_app(engine, settings)`."""

from service.api.app import create_app

__all__ = ["create_app"]
