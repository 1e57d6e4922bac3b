"""Service settings (env prefix ``GRIDMAP_``), created in one place and passed down."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE = "data/zhongxinlu.gpkg"


class Settings(BaseSettings):
    """Settings of a gridmap service; every field can be set as ``GRIDMAP_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="GRIDMAP_", extra="ignore")

    database: str = Field(
        DEFAULT_DATABASE,
        description="GeoPackage path (embedded default) or, later, a postgresql:// URL.",
    )
    default_limit: int = Field(100, ge=1, description="Items per page when none is asked.")
    max_limit: int = Field(1000, ge=1, description="Largest page; larger requests are clamped.")
    max_export: int = Field(
        100_000, ge=1, description="Most features one CSV download holds (f=csv)."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted.")
    max_upload_bytes: int = Field(
        200_000_000, ge=1024, description="Largest file accepted by an import (multipart)."
    )
    title: str = Field("中心路街道网格化管理", description="Service title on the landing page.")
    docs: bool = Field(True, description="Serve /docs (turn off in production if wished).")
    secret_key: str | None = Field(
        None, description="Key that signs tokens (≥ 32 characters); default: kept in the database."
    )
    token_minutes: int = Field(15, ge=1, le=24 * 60, description="Lifetime of access tokens.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (none by default)."
    )
    household_reads_per_minute: int = Field(
        120, ge=1, description="Household item requests one user may make per minute."
    )
    logins_per_minute: int = Field(20, ge=1, description="Login attempts per source per minute.")
    tianditu_key: str | None = Field(None, description="Key for the 天地图 basemap (optional).")
    forwarded_allow_ips: str = Field(
        "",
        description="Addresses of reverse proxies whose X-Forwarded-For is believed "
        "(comma-separated, e.g. 127.0.0.1 behind nginx); empty: the peer address is the source.",
    )
    database_replicas: str = Field(
        "",
        description="Comma-separated postgresql:// URLs of streaming replicas of the "
        "database: reads go to one that has replayed every change this process knows of, "
        "else to the primary (writes always).",
    )
    map_figures_max_age: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds a map's grid colours may lag the data while it keeps changing "
        "(the figures are counted again at most this often; /stats is always exact).",
    )
    feature_cache: int = Field(
        300_000, ge=0, description="Encoded features kept in memory per process (0: none)."
    )
    threads: int = Field(
        8,
        ge=1,
        le=256,
        description="Threads that run the API's blocking work in each process. Few is faster: "
        "the work holds Python's interpreter lock, and every thread more makes the event loop "
        "wait longer for it after each short release (a socket write, an SQLite read).",
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="The service log on stderr: JSON lines (with request ids) or text."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The least severe log records written (INFO: one line per request)."
    )
    metrics_from: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="Addresses (or networks) that may read /metrics; to others it is a 404.",
    )
    reveals_per_hour: int = Field(
        20, ge=1, description="Reveals of personal fields per user per hour."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings read from the environment, once."""
    return Settings()
