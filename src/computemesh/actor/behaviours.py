"""Every behaviour an actor may be asked to perform, named by its capability path.

A reply to a request carries the request's path plus ``/reply``; an error reply carries
``ERROR``. Topics are broadcast channels; a recipient ``topic:NAME`` travels on subject
``mesh.topic.NAME`` and a DID recipient on ``mesh.actor.DID``.
"""

from __future__ import annotations

# Provider discovery and liveness (broadcast).
ADVERTISEMENT = "/mesh/node/advertisement"
HEARTBEAT = "/mesh/node/heartbeat"
DISCOVER = "/mesh/node/discover"
PING = "/mesh/node/ping"
"""Request: ``{"sent_ms"}``; the reply echoes it. Round trips between actors."""

# Deployment: bidding and contracts.
BID_REQUEST = "/mesh/deployment/bid_request"
BID = "/mesh/deployment/bid"
BID_REFUSAL = "/mesh/deployment/bid_refusal"
COMMIT = "/mesh/deployment/commit"

# Allocations: results pushed by the provider, or fetched by the consumer.
RESULT = "/mesh/allocation/result"
RESULT_FETCH = "/mesh/allocation/result_fetch"
CANCEL = "/mesh/allocation/cancel"
"""Request: ``{"contract_id"}`` from the contract's consumer; the node stops the run."""

# Allocations while they run: signed checkpoints and live output pushed to the consumer;
# a node resuming a job fetches its checkpoint from the consumer.
CHECKPOINT = "/mesh/allocation/checkpoint"
CHECKPOINT_FETCH = "/mesh/allocation/checkpoint_fetch"
LOG = "/mesh/allocation/log"

ERROR = "/mesh/error"
REPLY_SUFFIX = "/reply"

ALL = frozenset(
    {
        ADVERTISEMENT,
        HEARTBEAT,
        DISCOVER,
        PING,
        BID_REQUEST,
        BID,
        BID_REFUSAL,
        COMMIT,
        RESULT,
        RESULT_FETCH,
        CANCEL,
        CHECKPOINT,
        CHECKPOINT_FETCH,
        LOG,
    }
)

# Broadcast topics.
TOPIC_ADVERTISEMENTS = "adverts"
TOPIC_HEARTBEATS = "heartbeats"
TOPIC_BID_REQUESTS = "bid-requests"
TOPIC_DISCOVER = "discover"


def reply_behavior(behavior: str) -> str:
    return behavior + REPLY_SUFFIX
