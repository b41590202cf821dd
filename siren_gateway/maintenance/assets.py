"""The asset register: what a district keeps of each siren as a thing it owns (serial number,
model, installation, mount height, battery), beside what the siren says of itself (firmware,
its latest values) and the rated sound level the site file gives it.

The site file seeds the register and the API (admins) edits it; for each field the latest edit
wins. At start the site file's values are compared with those it had when last read: a field
changed in the file since then replaces the record's value (and is logged as by "site file");
a field the file has kept leaves an edit made through the API in place. Every change is kept
with who made it and when.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError

from siren_gateway.config.site import AssetConfig, Catalogue
from siren_gateway.errors import Invalid, NotFound, StorageUnavailable
from siren_gateway.live.fleet import Fleet
from siren_gateway.maintenance.engine import siren_evidence
from siren_gateway.runtime.clock import Clock, iso_utc
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal
from siren_gateway.store.base import Store
from siren_gateway.store.errors import StorageError

FIELDS = tuple(AssetConfig.model_fields)
SITE_FILE = "site file"


class AssetRegister:
    def __init__(self, catalogue: Catalogue, fleet: Fleet, store: Store, audit: AuditLog,
                 clock: Clock | None = None) -> None:
        self.catalogue = catalogue
        self.sirens = {s.id: s for s in catalogue.sirens}
        self.fleet = fleet
        self.store = store.assets
        self.health = store.health
        self.audit = audit
        self.clock = clock or fleet.clock
        # siren -> field -> value (JSON form). Never changed in place (an update replaces a
        # siren's record), so sirens with equal records share one dict: on a large site most
        # records are alike, and a dict each cost ~0.3 kB a siren (bench/memory.py).
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()  # one edit at a time: each change's "old" is true

    async def start(self) -> None:
        stored = await self.store.all()
        now = self.clock.now()
        rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        changes = []
        shared: dict[str, dict[str, Any]] = {}
        for siren in self.sirens.values():
            seed = self._seed(siren.id)
            known, last_seed = stored.get(siren.id, ({}, {}))
            record = {name: known.get(name) for name in FIELDS}
            edited = {name: [record[name], seed[name]] for name in FIELDS
                      if seed[name] != last_seed.get(name) and seed[name] != record[name]}
            for name, (_, new) in edited.items():
                record[name] = new
            if siren.id not in stored or seed != last_seed or edited:
                rows.append((siren.id, record, seed))
            if edited:
                changes.append((siren.id, now, SITE_FILE, edited))
            self.records[siren.id] = shared.setdefault(
                json.dumps(record, sort_keys=True, default=str), record)
        if rows:
            await self.store.put(rows, changes)

    async def stop(self) -> None:
        """Nothing waits: every edit is written before it is answered."""

    def _seed(self, siren_id: str) -> dict[str, Any]:
        """The site file's values for the siren (made when needed, not held)."""
        return self.sirens[siren_id].asset.model_dump(mode="json")

    def view(self, siren_id: str) -> dict[str, Any]:
        siren = self.sirens.get(siren_id)
        if siren is None:
            raise NotFound(f"no siren {siren_id!r}")
        return {"siren_id": siren.id, "name": siren.name, "zones": list(siren.zones),
                "profile": siren.profile, "location": siren.location.model_dump(),
                **self.records[siren.id], "rated_db_c": self.catalogue.rated_db_c(siren),
                "device": siren_evidence(self.fleet, siren.id, self.clock.now())}

    def all(self) -> list[dict[str, Any]]:
        return [self.view(siren_id) for siren_id in self.sirens]

    async def history(self, siren_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: each change, who made it (a user or the site file) and when."""
        if siren_id not in self.sirens:
            raise NotFound(f"no siren {siren_id!r}")
        return [{"at": iso_utc(at), "by": by, "changes": diff}
                for _, at, by, diff in await self.store.changes(siren_id, limit)]

    async def update(self, who: Principal, siren_id: str, values: dict[str, Any]
                     ) -> dict[str, Any]:
        """Set the named fields (None clears one); written before it is answered, so a refused
        write (503) changes nothing."""
        if siren_id not in self.sirens:
            raise NotFound(f"no siren {siren_id!r}")
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise Invalid(f"not fields of the register: {', '.join(sorted(unknown))}")
        async with self._lock:
            current = self.records[siren_id]
            try:  # the same rules as the site file's
                checked = AssetConfig.model_validate(current | values).model_dump(mode="json")
            except ValidationError as exc:
                raise Invalid(f"asset record: {exc.errors()[0]['msg']}") from None
            diff = {name: [current[name], checked[name]] for name in values
                    if checked[name] != current[name]}
            if diff:
                try:
                    await self.store.put([(siren_id, checked, self._seed(siren_id))],
                                         [(siren_id, self.clock.now(), who.username, diff)])
                except StorageError as exc:
                    self.health.failed(exc)
                    await self.audit.record(who, "asset.update", f"failed: {exc}",
                                            target=f"siren:{siren_id}", changes=diff)
                    raise StorageUnavailable("the asset record could not be written; nothing "
                                             "changed, try again") from exc
                self.health.succeeded()
                self.records[siren_id] = checked
        await self.audit.record(who, "asset.update", "ok" if diff else "unchanged",
                                target=f"siren:{siren_id}", changes=diff)
        return self.view(siren_id)
