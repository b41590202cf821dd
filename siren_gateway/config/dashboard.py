"""The dashboard's map: a base layer from the site's own tile server, or none."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, model_validator

from siren_gateway.config.common import StrictModel


class MapConfig(StrictModel):
    """Control rooms usually run their own tile server, and many have no internet: the base
    layer is whatever `tile_url` names (e.g. `http://tiles.lan/{z}/{x}/{y}.png`). Without one
    the map draws only the site's own geometry: zone outlines, siren labels, a scale bar."""

    tile_url: str | None = Field(default=None, max_length=500)
    attribution: str = Field(default="", max_length=300)
    max_zoom: int = Field(default=18, ge=1, le=22)

    @model_validator(mode="after")
    def _check(self) -> MapConfig:
        if self.tile_url is not None:
            parts = urlsplit(self.tile_url.replace("{", "").replace("}", ""))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("tile_url: an http(s) address")
            missing = [p for p in ("{z}", "{x}", "{y}") if p not in self.tile_url]
            if missing:
                raise ValueError(f"tile_url: needs {', '.join(missing)}")
        return self

    @property
    def tile_origin(self) -> str | None:
        """scheme://host[:port] of the tile server (the page's content policy admits it)."""
        if self.tile_url is None:
            return None
        parts = urlsplit(self.tile_url)
        return f"{parts.scheme}://{parts.netloc}"
