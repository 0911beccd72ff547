"""The message bus: a ``Transport`` contract, an in-memory bus and NATS, plus a local server.

See ``computemesh.transport.base`` for the delivery contract every transport keeps.
"""

from computemesh.transport.base import (
    Message,
    MessageHandler,
    Subscription,
    Transport,
    validate_subject,
)
from computemesh.transport.memory import MemoryHub, MemoryTransport
from computemesh.transport.nats import NatsTransport
from computemesh.transport.natsserver import (
    NatsServerInfo,
    find_nats_server,
    free_port,
    is_process_alive,
    spawn_detached,
    start_nats_server,
    stop_process,
)

__all__ = [
    "MemoryHub",
    "MemoryTransport",
    "Message",
    "MessageHandler",
    "NatsServerInfo",
    "NatsTransport",
    "Subscription",
    "Transport",
    "find_nats_server",
    "free_port",
    "is_process_alive",
    "spawn_detached",
    "start_nats_server",
    "stop_process",
    "validate_subject",
]
