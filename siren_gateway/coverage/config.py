"""The sound model's settings (the site file's `coverage:` section), a zone's area and a
sound source.

Nothing here imports shapely or numpy until a zone with an area is read: a site without areas
(most) runs without them, ~21 MiB less resident (bench/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

ZoneKind = Literal["open", "suburban", "urban"]


def _default_excess() -> dict[ZoneKind, float]:
    # Our own planning estimates (dB per km of path, on top of spreading and air): ground and
    # scattered obstacles in suburbs, street canyons in a dense centre. Not from a standard:
    # set them from a site's own measurements.
    return {"open": 0.0, "suburban": 4.0, "urban": 8.0}


class CoverageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Loss per doubling of distance beyond 30 m: 6 dB is free-field spherical spreading; the
    # US civil-defence outdoor warning guide (FEMA CPG 1-17) plans with 10 dB, for built-up
    # areas.
    loss_per_doubling_db: float = Field(default=10.0, gt=0, le=20)
    # Air absorption near a siren's 400-600 Hz: ~2-3 dB/km at 20 degC (ISO 9613-1 tables).
    absorption_db_per_km: float = Field(default=2.5, ge=0, le=50)
    excess_db_per_km: dict[ZoneKind, float] = Field(default_factory=_default_excess)
    # A point hears the alarm at this level (CPG 1-17's effective range: 70 dB(C)), or at
    # ambient_margin_db above a zone's stated ambient level, whichever is higher.
    threshold_db: float = Field(default=70.0, ge=30, le=140)
    ambient_margin_db: float = Field(default=10.0, ge=0, le=40)
    target_share: float = Field(default=0.95, gt=0, le=1)  # below it: coverage_low
    cell_m: float = Field(default=25.0, ge=5, le=1000)
    # A siren whose profile and asset record give no rated level (dB(C) at 30 m).
    default_rated_db_c: float = Field(default=120.0, ge=60, le=150)
    # Faults that stop a siren making sound, on top of those its profile lists (the profile is
    # where a model's fault names live; this is for a site's own additions).
    silencing_faults: list[str] = []
    # Largest grid accepted (cells), so a mistyped cell size cannot exhaust memory.
    max_cells: int = Field(default=8_000_000, ge=1000, le=100_000_000)
    severity: Literal["info", "minor", "major", "critical"] = "major"
    # After a start, coverage_low waits until every siren has answered (or gone offline) or
    # this long has passed: sirens not yet heard from are not a coverage gap.
    startup_grace_s: float = Field(default=60.0, ge=0, le=3600)


@dataclass(frozen=True, slots=True)
class ZoneArea:
    id: str
    geometry: BaseGeometry  # lon/lat
    kind: ZoneKind
    threshold_db: float
    target_share: float


@dataclass(frozen=True, slots=True)
class Source:
    """A siren (or a candidate site) as the model sees it."""

    id: str
    lat: float
    lon: float
    rated_db_c: float


def zone_area(geojson: dict[str, Any]) -> BaseGeometry:
    """A zone's GeoJSON geometry (Polygon or MultiPolygon, lon/lat) as a valid shape."""
    import shapely
    from shapely.geometry import shape

    try:
        geometry = shape(geojson)
    except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
        raise ValueError(f"not a GeoJSON geometry: {exc}") from None
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"a zone's area is a Polygon or MultiPolygon, not {geometry.geom_type}")
    if geometry.is_empty or not shapely.is_valid(geometry):
        raise ValueError(f"invalid polygon: {shapely.is_valid_reason(geometry)}")
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise ValueError("coordinates are [lon, lat] in degrees")
    return geometry
