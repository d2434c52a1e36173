"""The environment an external component (a process or a container) is started with.

This is the whole contract between flowctl and a program it runs; nothing else is
passed (no arguments are added, nothing is written to stdin).

=============================  ==========================================================
Variable                       Value
=============================  ==========================================================
``FLOWCTL_FLOW``               the flow name
``FLOWCTL_COMPONENT_ID``       the node id in the flow
``FLOWCTL_REPLICA``            the replica index, ``0`` .. ``replicas-1``
``FLOWCTL_SERVICE_ID``         ``<flow>.<node>.<replica>`` (flowctl compatibility)
``NATS_URL``                   how to reach NATS, plus ``NATS_USER``/``NATS_PASSWORD``,
                               ``NATS_TOKEN``, ``NATS_CREDS``, ``NATS_TLS_CA``,
                               ``NATS_TLS_CERT``, ``NATS_TLS_KEY`` when the agent uses them
                               (:meth:`flowstore.nats.NatsOptions.env`; read them back with
                               :meth:`~flowstore.nats.NatsOptions.from_env`)
``FLOWCTL_INPUTS``             JSON object: input port -> list of subjects to subscribe to,
                               e.g. ``{"in": ["flowctl.orders.parse.out"]}``
``FLOWCTL_OUTPUTS``            JSON object: output port -> the one subject to publish to,
                               e.g. ``{"out": "flowctl.orders.enrich.out"}``
``FLOWCTL_QUEUE``              the queue group to subscribe in, so replicas share the work
``FLOWCTL_DELIVERY``           ``at-most-once`` or ``at-least-once`` (the flow's mode)
``FLOWCTL_CONFIG``             the node's ``config`` mapping as JSON (``{}`` when empty)
``FLOWCTL_DOWNSTREAM``         JSON object: downstream node -> replica count (a source may
                               wait until those report ``running`` before it emits)
``FLOWCTL_HEALTH_PORT``        only when the node sets ``health_port``: ``health_port +
                               replica`` (so replicas on one host do not collide; replica 0
                               gets ``health_port`` itself). The program must answer
                               ``GET /health`` there with 200 once it is ready
``FLOWCTL_FRAME_PORTS``        JSON list: output ports whose readers all take frames (the
                               program may publish frames there; single events are fine)
``FLOWCTL_STREAM``             at-least-once flows, nodes with inputs: the flow's stream
``FLOWCTL_CONSUMERS``          and its durable pull consumer per input port (JSON object);
                               the program reads its inputs there and acks each message
                               once its outputs are stored (the SDK does)
``ENABLE_FLOWCTL``             ``true`` (flowctl compatibility)
``FLOWCTL_ENDPOINT``           where the control plane is: the ``NATS_URL`` (flowctl
                               compatibility)
``COMPONENT_ID``               the node id (flowctl compatibility)
``FLOWCTL_HEARTBEAT_INTERVAL`` how often a registered component heartbeats, as a Go-style
                               duration: ``10s`` (a node's ``env`` may set another)
``FLOWCTL_HEARTBEAT_SUBJECT``  where a component registers (its first message) and
                               heartbeats (the SDK does); one that registered and falls
                               silent for 3 intervals is restarted
                               (:mod:`~componentmanager.runners.health`)
``FLOWCTL_READY_SUBJECT``      where a program says it is subscribed and ready (the SDK
                               does): it is reported ``running`` then, no earlier
=============================  ==========================================================

A message is one JSON event, or (with ``frames: true`` on the node) a frame of events as
JSON lines; the header ``Flowctl`` says how many (see :mod:`componentmanager.dataplane.wire`).
A process additionally
inherits the agent's own environment (``PATH``, ``HOME``, ...); a container gets only
the variables above.

The node's ``env`` mapping is applied last, on top of all of the above. In its values
``${VAR}`` is replaced by the agent's environment variable ``VAR`` when the replica
starts, so secrets stay out of the flow and out of NATS KV; ``${VAR:-default}`` gives a
default, and ``$${VAR}`` stands for a literal ``${VAR}``. A ``${VAR}`` the agent does not
have is an error (:class:`UndefinedVariableError`): the replica is ``failed`` with a
``last_error`` naming the variable, never started with an empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from flowstore.models import ComponentConfig, consumer_name, stream_name

#: How often a component heartbeats (``FLOWCTL_HEARTBEAT_INTERVAL``) unless its node's
#: ``env`` sets another interval: silent for three of these while registered, it is
#: restarted (:mod:`componentmanager.runners.health`).
COMPONENT_HEARTBEAT_S = 10.0

_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UndefinedVariableError(ValueError):
    """A ``${VAR}`` in a component's ``env`` names a variable the agent does not have."""

    def __init__(self, variable: str, key: str) -> None:
        super().__init__(
            f"env {key}: undefined variable ${{{variable}}} (not set in the agent's environment)"
        )
        self.variable = variable
        self.key = key


def expand(value: str, environ: Mapping[str, str], key: str = "?") -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in ``value`` from ``environ``."""

    def sub(m: re.Match[str]) -> str:
        escaped, name, default = m.group(1), m.group(2), m.group(3)
        if escaped:
            return m.group(0)[1:]
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise UndefinedVariableError(name, key)

    return _VAR.sub(sub, value)


def format_duration(seconds: float) -> str:
    """Seconds as a Go-style duration (``2s``, ``0.5s``), as flowctl programs parse it."""
    return f"{seconds:g}s"


def health_port(cfg: ComponentConfig, index: int) -> int | None:
    """The health port of replica ``index``: ``health_port + index``, or None."""
    if cfg.external is None or not cfg.external.health_port:
        return None
    return cfg.external.health_port + index


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def parse_duration(text: str, default: float) -> float:
    """Seconds from a Go-style duration (``10s``, ``500ms``, ``1m``, ``2``), else ``default``."""
    text = text.strip()
    for unit, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            text, scale = text[: -len(unit)], factor
            break
    else:
        scale = 1.0
    try:
        value = float(text) * scale
    except ValueError:
        return default
    return value if value > 0 else default


def heartbeat_subject(flow: str, node: str, index: int) -> str:
    """Where a component registers and heartbeats (see the module docstring)."""
    return f"flowctl.heartbeat.{flow}.{node}.{index}"


def ready_subject(flow: str, node: str, index: int) -> str:
    """Where a program says it is subscribed and ready (the SDK does), so the agent
    reports it running, and upstream sources start, no earlier."""
    return f"flowctl.ready.{flow}.{node}.{index}"


def component_env(
    cfg: ComponentConfig,
    index: int,
    nats_env: Mapping[str, str],
    agent_environ: Mapping[str, str],
    heartbeat_s: float,
) -> dict[str, str]:
    """The contract variables of replica ``index`` of ``cfg`` (see the module docstring).

    Pure: reads nothing but its arguments. Raises :class:`UndefinedVariableError` for a
    ``${VAR}`` in ``cfg.external.env`` that ``agent_environ`` lacks.
    """
    env: dict[str, str] = dict(nats_env)
    env.update(
        {
            "FLOWCTL_FLOW": cfg.flow,
            "FLOWCTL_COMPONENT_ID": cfg.node,
            "FLOWCTL_REPLICA": str(index),
            "FLOWCTL_SERVICE_ID": f"{cfg.flow}.{cfg.node}.{index}",
            "FLOWCTL_INPUTS": _json(cfg.inputs),
            "FLOWCTL_OUTPUTS": _json(cfg.outputs),
            "FLOWCTL_QUEUE": cfg.queue,
            "FLOWCTL_DELIVERY": cfg.delivery,
            "FLOWCTL_CONFIG": _json(cfg.config),
            "FLOWCTL_DOWNSTREAM": _json(cfg.downstream),
            "FLOWCTL_FRAME_PORTS": _json(cfg.frame_ports),
            "FLOWCTL_READY_SUBJECT": ready_subject(cfg.flow, cfg.node, index),
            "ENABLE_FLOWCTL": "true",
            "FLOWCTL_ENDPOINT": nats_env.get("NATS_URL", ""),
            "COMPONENT_ID": cfg.node,
            "FLOWCTL_HEARTBEAT_INTERVAL": format_duration(heartbeat_s),
            "FLOWCTL_HEARTBEAT_SUBJECT": heartbeat_subject(cfg.flow, cfg.node, index),
        }
    )
    ext = cfg.external
    if ext is not None:
        port = health_port(cfg, index)
        if port is not None:
            env["FLOWCTL_HEALTH_PORT"] = str(port)
        if cfg.delivery == "at-least-once" and cfg.inputs:
            env["FLOWCTL_STREAM"] = stream_name(cfg.flow)
            env["FLOWCTL_CONSUMERS"] = _json(
                {port: consumer_name(cfg.node, port) for port in cfg.inputs})
        for key, value in ext.env.items():
            env[key] = expand(str(value), agent_environ, key)
    return env
