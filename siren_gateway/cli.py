"""Command line: check-config, run, demo."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

from siren_gateway.config.common import ConfigError
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import Site
from siren_gateway.runtime.logs import configure as configure_logging


def _check_config(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    cfg = site.config
    print(f"{args.file}: OK - {len(cfg.sirens)} sirens, {len(cfg.zones)} zones, "
          f"{len(site.signals)} signals, profiles: {', '.join(sorted(site.profiles))}")
    return 0


def _site_or_none(path: Path) -> Site | None:
    """The site, or None after printing every problem of the file."""
    try:
        return load_site(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from siren_gateway.api.app import create_app
    from siren_gateway.gateway import Gateway

    site = _site_or_none(args.config)
    if site is None:
        return 1
    if args.database_url:  # (each node may log in as a role of its own)
        import dataclasses

        from siren_gateway.config.database import DatabaseConfig

        site = dataclasses.replace(site, config=site.config.model_copy(
            update={"database": DatabaseConfig(url=args.database_url)}))
    api = site.config.api
    host, port = args.host or api.host, args.port or api.port
    node = None
    if args.node_id:
        from siren_gateway.cluster.membership import NodeIdentity

        if site.config.database is None:
            print("--node-id needs database: {url: postgresql://...} in the site file",
                  file=sys.stderr)
            return 1
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.node_id):
            print("--node-id: 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
            return 1
        scheme = "https" if api.tls_cert_file else "http"
        node = NodeIdentity(args.node_id, args.advertise or f"{scheme}://{host}:{port}")
    def demoted() -> None:
        # Crash-only: a node that lost the leadership ends; its supervisor starts it again
        # as a follower with its state read fresh from the database (docs/cluster.md).
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)

    try:
        gateway = Gateway(site, args.database, node, on_demoted=demoted)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    app = create_app(gateway)
    uvicorn.run(app, **server_options(site, host, port))
    return 0


def server_options(site: Site, host: str, port: int) -> dict[str, Any]:
    """uvicorn's settings from the site's api: section: TLS, trusted proxies, logging."""
    api = site.config.api
    base = site.source.parent if site.source is not None else Path.cwd()
    options: dict[str, Any] = {
        "host": host, "port": port, "log_level": "info",
        "log_config": None,  # uvicorn logs through ours (text or JSON, credentials redacted)
        # Forwarded headers only from the proxies the site trusts: anyone else could claim
        # any address and escape the login throttle and the audit.
        "proxy_headers": bool(api.trusted_proxies),
        "forwarded_allow_ips": ",".join(api.trusted_proxies) or "127.0.0.1",
        "server_header": False,
    }
    if api.tls_cert_file and api.tls_key_file:
        options["ssl_certfile"] = str(base / api.tls_cert_file)
        options["ssl_keyfile"] = str(base / api.tls_key_file)
    return options


def _audit_verify(args: argparse.Namespace) -> int:
    from siren_gateway.store.audit import verify_file
    from siren_gateway.store.sqlite import database_path

    site = _site_or_none(args.config)
    if site is None:
        return 1
    path = database_path(site, args.database)
    if not path.exists():
        print(f"{path}: no such database", file=sys.stderr)
        return 1
    report = verify_file(path)
    older = f" ({report.unchained} older entries from before the chain)" if report.unchained else ""
    if report.ok:
        print(f"{path}: audit log verifies: {report.entries} entries{older}")
        return 0
    print(f"{path}: audit entry {report.first_bad_id} does not verify: {report.problem} "
          f"({report.entries} entries before it verify{older})")
    return 1


def _demo(args: argparse.Namespace) -> int:
    from siren_gateway.demo import run_demo

    if args.nodes > 1 and not args.database_url:
        print("--nodes needs --database-url postgresql://...: the nodes share one database",
              file=sys.stderr)
        return 2
    if not 1 <= args.nodes <= 9:
        print("--nodes must be between 1 and 9", file=sys.stderr)
        return 2
    if args.sirens is not None and not 1 <= args.sirens <= 20000:
        print("--sirens must be between 1 and 20000", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        influx = None
        if args.influx_url:
            influx = {"url": args.influx_url, "token": args.influx_token, "org": args.influx_org,
                      "bucket": args.influx_bucket, "string_fields": not args.influx_no_strings}
        run_demo(args.port, args.sim_port, args.sirens, args.data_dir, influx,
                 broker_kind=args.broker, nodes=args.nodes, database_url=args.database_url)
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    from siren_gateway.security.auth import hash_password

    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass("Password: ")
    if len(password) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siren-gateway",
                                     description="Monitor and control outdoor warning sirens.")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one object per line (time, level, logger, message)")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a site file; exit 1 if it has problems")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_check_config)

    run = sub.add_parser("run", help="run the gateway against the devices of a site file")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--host", default=None, help="API address (default: from the config)")
    run.add_argument("--port", type=int, default=None, help="API port (default: from the config)")
    run.add_argument("--database", type=Path, default=None, help="SQLite file (default: config)")
    run.add_argument("--database-url", default=None,
                     help="PostgreSQL URL instead of the site file's database: (a secret kept "
                     "out of the file)")
    run.add_argument("--node-id", default=None,
                     help="run as one node of a cluster sharing the site's PostgreSQL database "
                     "(docs/cluster.md); unique per node")
    run.add_argument("--advertise", default=None,
                     help="this node's API address as the other nodes and the dashboard reach "
                     "it (default: http://HOST:PORT)")
    run.set_defaults(handler=_run)

    demo = sub.add_parser("demo", help="simulated district + gateway + API on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="gateway API port")
    demo.add_argument("--sim-port", type=int, default=8081, help="simulator control API port")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto",
                      help="embedded MQTT broker for the MQTT sirens (auto: mosquitto if "
                      "installed, else amqtt)")
    demo.add_argument("--sirens", type=int, default=None,
                      help="simulate N sirens instead of the 20 of siren_gateway/data/demo.yaml")
    demo.add_argument("--data-dir", type=Path, default=None,
                      help="where the demo writes its site file and database (default: a temp dir)")
    demo.add_argument("--influx-url", default=None,
                      help="also write telemetry to this InfluxDB v2 write API (or VictoriaMetrics)")
    demo.add_argument("--influx-token", default="")
    demo.add_argument("--influx-org", default="siren-gateway")
    demo.add_argument("--influx-bucket", default="sirens")
    demo.add_argument("--influx-no-strings", action="store_true",
                      help="send numbers and flags only (VictoriaMetrics stores strings as 0)")
    demo.add_argument("--nodes", type=int, default=1,
                      help="run N gateway nodes (a cluster, docs/cluster.md) on ports PORT.. "
                      "PORT+N-1; needs --database-url")
    demo.add_argument("--database-url", default=None,
                      help="PostgreSQL for the gateway's state (and the cluster's)")
    demo.set_defaults(handler=_demo)

    verify = sub.add_parser("audit-verify", help="check the audit log's hash chain; exit 1 "
                            "naming the first entry that does not verify")
    verify.add_argument("--config", type=Path, required=True)
    verify.add_argument("--database", type=Path, default=None, help="SQLite file (default: config)")
    verify.set_defaults(handler=_audit_verify)

    hasher = sub.add_parser("hash-password", help="print the argon2id hash of a password for users:")
    hasher.add_argument("--stdin", action="store_true", help="read the password from stdin")
    hasher.set_defaults(handler=_hash_password)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format == "json")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we count and report link errors
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
