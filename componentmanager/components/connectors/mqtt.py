"""MQTT (3.1.1 and 5) source and sink, over aiomqtt (paho-mqtt underneath).

``mqtt`` source: subscribes to ``topic`` (wildcards ``+`` and ``#``, shared subscriptions
``$share/<group>/...``) on ``url`` (``mqtt://host:port``, ``mqtts://`` with TLS). A payload
that is a JSON object becomes the event; anything else ``{"payload": "<text>"}``; the MQTT
topic goes in the field ``topic`` (``topic_field``).

What the broker hands over is acknowledged only once it is stored in the flow's stream:
the client acks by hand (paho's manual ack, ``PUBACK`` in the order received) when the
runtime's publisher says every event emitted up to that message is stored; with
``delivery: exactly-once`` only once the source's checkpoint is written past it too (see
:class:`~.mqtt_source._Confirmation`: acking on storage alone there loses events after a crash, the
ids of stored events being given to new ones). At-most-once acks on emit.

A QoS 2 subscription is made at QoS 1: in QoS 2 the receiver answers ``PUBREC`` on
receipt (paho does, it cannot be delayed) and the broker then never sends the payload
again, so a crash before the event is stored would lose it; at QoS 1 the ``PUBACK``
waits for the stream. The client keeps a persistent session (MQTT 3.1.1
``clean_session: false``; MQTT 5 ``clean_start: false`` with ``session_expiry``) under a
fixed client id per replica, so what is published while the source is down (a crash, a
move, a restart) is queued by the broker and delivered when it comes back; an event
stored but not yet acked at a crash is delivered again (at-least-once: a repeat, never a
loss; exactly-once: under the id it had, skipped, except after an ack that was on its
way at the crash: the broker sends that message again too and the ids after it shift,
so a few events may repeat; never a loss). The broker keeps at most its
``max_queued_messages`` (mosquitto: 1,000 by default) per offline session: raise it for
long outages.

``mqtt`` sink: publishes each event as JSON to ``topic``, a template whose ``{...}`` parts
are expressions of the event (``devices/{device}/out``, ``{{``/``}}`` for literal braces),
at ``qos`` (a QoS 1/2 publish returns once the broker acknowledged it), ``retain``
optional. MQTT has no de-duplication by id: the sink cannot take part in an exactly-once
flow (``exactly_once`` None: ``validate`` refuses it); at-least-once it may publish an
event again after a crash.

Both: ``username``/``password`` only as ``${VAR}`` (expanded from the agent's environment
when the replica starts: never in the flow, KV, logs or errors), or ``password_file``; a
broker unreachable at start or going away means retrying with a growing pause (up to
:data:`RETRY_MAX_S`), logged once per :data:`SAY_EVERY_S` and shown as the replica's
status reason (``waiting: mqtt broker at host:port ...``).

This module: the config models and the registration of both types. The code is in
``mqtt_client`` (connection, TLS, credentials, retrying), ``mqtt_source`` and ``mqtt_sink``.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from componentmanager.components.connectors.mqtt_client import RETRY_MAX_S, SAY_EVERY_S
from componentmanager.components.connectors.mqtt_sink import MqttSink, parse_template
from componentmanager.components.connectors.mqtt_source import MqttSource
from componentmanager.registry import RECEIVES_UNTIL_STOPPED, ComponentType, Port, register

__all__ = ["RETRY_MAX_S", "SAY_EVERY_S", "MqttSink", "MqttSinkConfig", "MqttSource",
           "MqttSourceConfig", "parse_template"]

_SECRET = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


# ---------------------------------------------------------------------------- config


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"url {value!r}: use mqtt://host:port or mqtts://host:port (TLS)")
    if "@" in parts.netloc:
        raise ValueError("url: no credentials in the url (they would be stored in the flow "
                         "and shown); use username: ${VAR} and password: ${VAR}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url {value!r}: {exc}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or port == 0:
        raise ValueError(f"url {value!r}: expected mqtt://host[:port] with nothing after it")
    return value


def _check_secret(value: str | None) -> str | None:
    if value is not None and not _SECRET.match(value):
        raise ValueError("give it as ${VAR}, a variable of the agent's environment (it is "
                         "never stored in the flow, KV, logs or errors)")
    return value


def _check_filter(topic: str) -> str:
    """An MQTT topic filter: ``+`` a whole level, ``#`` the whole last level."""
    levels = topic.split("/")
    if levels[0] == "$share":
        if len(levels) < 3 or not levels[1] or any(c in levels[1] for c in "+#"):
            raise ValueError(f"topic {topic!r}: a shared subscription is $share/<group>/<filter>")
        levels = levels[2:]
    if not topic or "\x00" in topic:
        raise ValueError("topic: empty or holds a NUL")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise ValueError(f"topic {topic!r}: + and # must each be a whole level")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"topic {topic!r}: # must be the last level")
    return topic


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # no secret echoed

    url: str = Field(description="mqtt://host[:port] (1883 by default) or mqtts://host[:port] "
                     "(TLS, 8883 by default).")
    qos: Literal[0, 1, 2] = Field(default=1, description="MQTT quality of service 0, 1 or 2.")
    client_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Client id; replica n > 0 adds -n. Default flowctl-<flow>-<node>-<replica>.")
    username: str | None = Field(default=None, description="${VAR} only: from the agent's "
                                 "environment.")
    password: str | None = Field(default=None, description="${VAR} only: from the agent's "
                                 "environment.")
    password_file: str | None = Field(
        default=None, min_length=1,
        description="A file on the agent holding the password (instead of password; "
        "read at start, a final newline dropped).")
    ca_file: str | None = Field(default=None, description="mqtts: a CA bundle (PEM) to trust "
                                "instead of the system's.")
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT version.")
    keepalive: int = Field(default=30, ge=5, le=3600, description="Seconds between pings.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("username", "password")
    @classmethod
    def _secrets(cls, value: str | None) -> str | None:
        return _check_secret(value)

    @model_validator(mode="after")
    def _one_password(self) -> _Common:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class MqttSourceConfig(_Common):
    topic: str = Field(description="Topic filter to subscribe to; + and # wildcards, "
                       "$share/<group>/<filter> to split messages between subscribers.")
    topic_field: str | None = Field(
        default="topic", min_length=1,
        description="The event field that gets the message's topic (null: none).")
    session_expiry: int = Field(
        default=7 * 86400, ge=0,
        description="MQTT 5: seconds the broker keeps the session (and queues messages) "
        "while the source is away. MQTT 3.1.1 sessions last as long as the broker keeps them.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _check_filter(value)


class MqttSinkConfig(_Common):
    topic: str = Field(description="Topic to publish to: a template, {...} parts are "
                       "expressions of the event (devices/{device}/out); no wildcards.")
    retain: bool = Field(default=False, description="Publish with the retain flag.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        parts = parse_template(value)
        if any(isinstance(p, str) and ("+" in p or "#" in p) for p in parts) or not value:
            raise ValueError(f"topic {value!r}: no wildcards (+, #) in a topic to publish to")
        return value


# -------------------------------------------------------------------------- register

_MOD = "componentmanager.components.connectors.mqtt"
OUT = (Port("out", description="one event per MQTT message"),)
IN = (Port("in", required=True, description="the events to publish"),)

register(ComponentType(
    name="mqtt", role="source", config_model=MqttSourceConfig, outputs=OUT,
    description="Subscribe to an MQTT topic (3.1.1 or 5) and emit each message.",
    impl=f"{_MOD}_source:MqttSource",
    runs_forever=RECEIVES_UNTIL_STOPPED,
    docs='A JSON object payload is the event, anything else {"payload": text}; the topic '
         "goes in the field topic. QoS 1/2 messages are acked to the broker only once "
         "stored in the flow's stream (QoS 2 subscribes at QoS 1 for that); a persistent "
         "session under a fixed client id per replica gets what was published while the "
         "source was away. username/password as ${VAR} only.",
))
register(ComponentType(
    name="mqtt", role="sink", exactly_once=None, config_model=MqttSinkConfig, inputs=IN,
    description="Publish each event as JSON to an MQTT topic (a template of event fields).",
    impl=f"{_MOD}_sink:MqttSink",
    docs="topic: {...} parts are expressions of the event (devices/{device}/out). QoS 1/2 "
         "publishes wait for the broker's ack; a lost broker is retried (the flow waits). "
         "At-least-once at best: MQTT cannot drop a repeated publish, so exactly-once flows "
         "refuse this sink.",
))
