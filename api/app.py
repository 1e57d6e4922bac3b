"""The app factory: settings in, FastAPI app out; the store opens in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api import auth, errors, observe
from api.middleware import BodyLimit, HeadAsGet, ReadAudit, SecurityHeaders
from api.routes import (
    analysis,
    balance,
    camera_analysis,
    campaigns,
    domain,
    edit,
    features,
    maps,
    renovation,
    routing,
    transfer,
)
from gridmap.accounts import Accounts, token_secret
from gridmap.geojson import FeatureCache
from gridmap.maps import ASSET_PREFIX, asset_dirs
from gridmap.maps.cache import Figures, PageCache
from gridmap.observe import configure_logging
from gridmap.ratelimit import SOLVING, RateLimiter
from gridmap.settings import Settings, get_settings
from gridmap.store import open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gridmap API for ``settings`` (read from the environment when omitted)."""
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        replicas = [u.strip() for u in settings.database_replicas.split(",") if u.strip()]
        store = open_store(settings.database, replicas=replicas)
        to_thread.current_default_thread_limiter().total_tokens = settings.threads
        app.state.solver_threads = CapacityLimiter(SOLVING.limit)  # see api.deps.solving
        app.state.store = store
        app.state.features = FeatureCache(settings.feature_cache)
        app.state.pages = PageCache()
        app.state.layers = PageCache(256)  # the overview's layers, by their own stamps
        app.state.figures = Figures(settings.map_figures_max_age)
        app.state.stats = PageCache(128)  # /stats answers, while nothing they count changes
        # counted in the store: every API process over it shares them
        app.state.login_limiter = RateLimiter(store, "login", settings.logins_per_minute, 60)
        app.state.household_limiter = RateLimiter(
            store, "household", settings.household_reads_per_minute, 60
        )
        app.state.reveal_limiter = RateLimiter(store, "reveal", settings.reveals_per_hour, 3600)
        app.state.accounts = Accounts(
            store,
            secret=token_secret(store, settings.secret_key),
            token_minutes=settings.token_minutes,
        )
        try:
            yield
        finally:
            store.close()  # this lifespan's own store (apps may be started more than once)

    # Swagger UI from the fastapi-offline package, not a CDN (an intranet has no internet).
    app = FastAPIOffline(
        title=settings.title,
        version="0.1.0",
        description="OGC API – Features over the grid-management layers of a subdistrict.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        static_url="/static/docs",
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(ReadAudit)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Content-Crs"],
            expose_headers=["ETag", "Location", "Content-Crs", "X-Request-ID"],
        )
    app.add_middleware(observe.Observe)  # outermost: its time and status are what the client saw
    app.include_router(features.router)  # first: the busiest routes are matched soonest
    app.include_router(auth.router)
    app.include_router(edit.router)
    app.include_router(domain.router)
    app.include_router(maps.router)
    app.include_router(routing.router)
    app.include_router(campaigns.router)
    app.include_router(analysis.router)
    app.include_router(camera_analysis.router)
    app.include_router(renovation.router)
    app.include_router(balance.router)
    app.include_router(transfer.router)
    app.include_router(observe.router)
    for name, directory in asset_dirs().items():
        app.mount(f"{ASSET_PREFIX}/{name}", StaticFiles(directory=directory), name=f"static-{name}")
    return app
