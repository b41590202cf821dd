"""Our one adapter over aiomqtt's Client: every MQTT connection of the gateway and simulators.

aiomqtt (2.5) hands paho's "register write" callback to the event loop through
`call_soon_threadsafe`, even when paho calls it on the loop's own thread, as it does for every
publish and every PUBACK it owes. The deferred `add_writer` can then run after paho has already
closed the socket on a broker's disconnect. Under uvloop (which uvicorn runs the gateway on)
that loses the disconnect: measured with a broker stopped under a QoS 1 stream, 3 of 40
connections never noticed it until keep-alive ran out (30-60 s), and for that long the gateway
took every MQTT siren for silent and could publish no command. On the loop's thread we
therefore register the writer at once, keeping paho's order of register, unregister and close;
only paho's connect, which aiomqtt runs in an executor thread, still goes through the loop's
thread-safe hand-over. With this, 100 of 100 such connections noticed the broker leave.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

MqttError = aiomqtt.MqttError
Message = aiomqtt.Message
Will = aiomqtt.Will


class MqttClient(aiomqtt.Client):
    """aiomqtt.Client with the writer registered in paho's order (see the module's text)."""

    def _on_socket_register_write(self, client: paho.Client, userdata: Any,
                                  sock: Any) -> None:
        if not self._on_loop_thread():
            super()._on_socket_register_write(client, userdata, sock)  # paho's connect thread
            return

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken pipe is a lost connection, as in aiomqtt
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        if sock.fileno() >= 0:  # a socket paho has closed already has nothing to write
            self._loop.add_writer(sock.fileno(), write)


    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop runs on this thread: paho's connect in the executor
            return False
