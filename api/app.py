"""The app factory: settings in, FastAPI app out; the store opens in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.routes import domain, edit, features, maps
from gridmap.geojson import FeatureCache
from gridmap.maps import ASSET_PREFIX, asset_dirs
from gridmap.settings import Settings, get_settings
from gridmap.store import open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gridmap API for ``settings`` (read from the environment when omitted)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = open_store(settings.database)
        app.state.features = FeatureCache()
        try:
            yield
        finally:
            app.state.store.close()

    app = FastAPI(
        title=settings.title,
        version="0.1.0",
        description="OGC API – Features over the grid-management layers of a subdistrict.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(features.router)
    app.include_router(edit.router)
    app.include_router(domain.router)
    app.include_router(maps.router)
    for name, directory in asset_dirs().items():
        app.mount(f"{ASSET_PREFIX}/{name}", StaticFiles(directory=directory), name=f"static-{name}")
    return app
