"""How the gateway reaches each siren: Modbus links (TCP, RTU over TCP, serial RTU), MQTT, and the broker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from siren_gateway.config.common import Identifier, Port, StrictModel, UnitId


class ModbusTcpLink(StrictModel):
    """Modbus TCP (MBAP framing) to a controller or a Modbus gateway."""

    type: Literal["modbus_tcp"]
    host: str
    port: Port = 502
    unit_id: UnitId = 1
    timeout_s: float = Field(default=1.0, gt=0, le=30)


class ModbusRtuOverTcpLink(StrictModel):
    """Modbus RTU frames tunnelled through a serial device server (RS-485 multidrop)."""

    type: Literal["modbus_rtu_over_tcp"]
    host: str
    port: Port
    unit_id: UnitId = Field(ge=1)
    timeout_s: float = Field(default=1.0, gt=0, le=30)


class ModbusRtuSerialLink(StrictModel):
    """Modbus RTU on a local serial port."""

    type: Literal["modbus_rtu"]
    device: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: UnitId = Field(ge=1)
    timeout_s: float = Field(default=1.0, gt=0, le=30)


class MqttLink(StrictModel):
    """A controller that reports to (and takes commands from) the site's MQTT broker."""

    type: Literal["mqtt"]
    # The {device} part of its topics; default: the siren id.
    device_id: Identifier | None = None
    # Overrides the profile's reporting interval (stale and offline are judged from it).
    telemetry_interval_s: float | None = Field(default=None, gt=0, le=3600)


ModbusLink = ModbusTcpLink | ModbusRtuOverTcpLink | ModbusRtuSerialLink
Link = Annotated[
    ModbusTcpLink | ModbusRtuOverTcpLink | ModbusRtuSerialLink | MqttLink,
    Field(discriminator="type"),
]
LINK_TYPES = frozenset({"modbus_tcp", "modbus_rtu_over_tcp", "modbus_rtu", "mqtt"})


def endpoint_key(link: ModbusLink) -> str:
    """Sirens whose links share this key share one connection (and its request queue)."""
    if isinstance(link, ModbusRtuSerialLink):
        return f"serial:{link.device}"
    return f"{link.type}:{link.host}:{link.port}"


MqttTopicPrefix = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]


class MqttTlsConfig(StrictModel):
    ca_file: str | None = None  # None: the system's trust store
    cert_file: str | None = None  # client certificate, for brokers that ask for one
    key_file: str | None = None
    # Only for a lab broker with a self-signed certificate: accepts any server.
    insecure_skip_verify: bool = False


class MqttBrokerConfig(StrictModel):
    """The broker the site's MQTT controllers report to (mosquitto, EMQX, ...; MQTT 3.1.1)."""

    host: str
    port: Port = 1883
    username: str | None = None
    password: str | None = None
    tls: MqttTlsConfig | None = None
    # Two gateways with one client id would keep disconnecting each other: default is unique.
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    topic_prefix: MqttTopicPrefix = "sirens"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_initial_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=600)
    # A connect (or subscribe) left unanswered, e.g. by a broker that is shutting down or
    # starting up, is given up after this and retried, rather than holding the link for long.
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # A command with no accepted/rejected acknowledgement by then is reported unacknowledged.
    ack_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # Silent for this many reporting intervals: offline (stale comes first, as for polling).
    offline_after_intervals: float = Field(default=4.0, ge=1.5, le=100)
    # Commands being published at once; aiomqtt stalls with thousands pending.
    publish_window: int = Field(default=64, ge=1, le=10_000)
    # Inbound messages waiting to be handled; beyond it the oldest are dropped (counted).
    max_queued_messages: int = Field(default=50_000, ge=100, le=1_000_000)
