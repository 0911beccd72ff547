"""Actors addressed by DID, behaviours keyed by capability path, and supervision."""

from computemesh.actor import behaviours
from computemesh.actor.runtime import Actor, Handler, Inbound, subject_for, topic
from computemesh.actor.supervisor import RestartPolicy, Supervisor

__all__ = [
    "Actor",
    "Handler",
    "Inbound",
    "RestartPolicy",
    "Supervisor",
    "behaviours",
    "subject_for",
    "topic",
]
