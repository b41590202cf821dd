"""A whole gateway on PostgreSQL (`database: {url: ...}` in the site file), over real sockets
against the simulators: an activation sounds, its record, the audit log and the telemetry land
in PostgreSQL and nothing in a SQLite file; after a restart it is all still there."""

from __future__ import annotations

import psycopg

from simulators.sitegen import generate_site
from siren_gateway.gateway import Gateway
from tests.conftest import StartDistrict, wait_until, with_users
from tests.databases import needs_postgres
from tests.test_activation import Api, by_siren
from tests.test_workorders import StartGateway

pytestmark = needs_postgres


async def test_a_gateway_keeps_its_state_in_postgres(
        start_district: StartDistrict, gateways: StartGateway, postgres_url: str) -> None:
    site = with_users(generate_site(3, poll_interval_s=0.25, timeout_s=0.3),
                      confirm_timeout_s=10.0, sync_lead_s=1.0, confirm_poll_interval_s=0.25)
    site["database"] = {"url": postgres_url}
    site["storage"] = {"telemetry_min_interval_s": 0}
    simulated = start_district(site)
    gateway: Gateway = await gateways(simulated.site())
    assert gateway.db.describe().startswith("PostgreSQL 127.0.0.1")
    await wait_until(lambda: gateway.fleet.counts()["online"] == 3, 10, "all online")
    api = await Api(gateway).login("operator")
    response = await api.post("/api/activations", {
        "targets": {"all": True}, "class": "test", "signal": "growl_test"})
    assert response.status_code == 201, response.text
    activation_id = response.json()["id"]
    report = await api.finished(activation_id)
    assert {sid: r["status"] for sid, r in by_siren(report).items()} == {
        "s00001": "sounded", "s00002": "sounded", "s00003": "sounded"}
    for siren in ("s00001", "s00002", "s00003"):
        truth = await simulated.control.truth(siren)
        assert [o["signal"] for o in truth["onsets"]] == ["growl_test"]
    await wait_until(lambda: gateway.telemetry.written >= 3, 10, "telemetry stored")
    await gateway.stop()

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT state FROM activations WHERE id = %s",
                            (activation_id,)).fetchone() == ("completed",)
        assert conn.execute("SELECT count(*) FROM activation_results WHERE activation_id = %s",
                            (activation_id,)).fetchone() == (3,)
        actions = {r[0] for r in conn.execute("SELECT action FROM audit")}
        assert {"auth.login", "activation.create"} <= actions, actions
        assert conn.execute("SELECT count(DISTINCT siren_id) FROM telemetry").fetchone() == (3,)
    assert not list(simulated.site_file.parent.glob("*.db"))  # nothing went to SQLite

    again = await gateways(simulated.site())
    api = await Api(again).login("viewer")
    kept = (await api.get(f"/api/activations/{activation_id}")).json()
    assert kept["state"] == "completed" and kept["counts"]["sounded"] == 3
    detail = (await api.get("/api/sirens/s00001")).json()
    assert detail["history"], "telemetry history read back from PostgreSQL"
