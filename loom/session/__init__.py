"""The connection layer: the one way a process talks to a broker's control socket.

* :class:`Session`: a peer's DEALER, its HELLO and heartbeats, typed requests
  (``request``) whose ``ERROR`` answers become ``RefusedError`` subclasses, and the tool
  plane's frames for whoever handles them.
* :class:`ToolClient`: tool calls (deadlines, progress, cancellation) and approvals over
  a session; :class:`Directory` and its parts, what DIRECTORY answers.
* :func:`ask`: one question to a broker without joining the mesh (``loom stats``);
  :func:`wait_for_broker`, :func:`broker_answers`.
* :func:`peer_key`, :func:`secure_client`: the CURVE keys a peer presents.
* :func:`announced_endpoint`, :func:`reachable_endpoint`, :func:`check_endpoint`: the
  rules for endpoints.
* :func:`serve_until_signalled`: how every long-running peer's ``run()`` serves.
"""

from loom.session._calls import ToolClient
from loom.session._directory import ActorInfo, Directory, ToolInfo, WorkerInfo
from loom.session._endpoints import announced_endpoint, check_endpoint, reachable_endpoint
from loom.session._oneshot import ask, broker_answers, wait_for_broker
from loom.session._security import NO_KEY, KeySpec, PeerKey, peer_key, secure_client
from loom.session._serving import serve_until_signalled
from loom.session._session import Session

__all__ = [
    "NO_KEY",
    "ActorInfo",
    "Directory",
    "KeySpec",
    "PeerKey",
    "Session",
    "ToolClient",
    "ToolInfo",
    "WorkerInfo",
    "announced_endpoint",
    "ask",
    "broker_answers",
    "check_endpoint",
    "peer_key",
    "reachable_endpoint",
    "secure_client",
    "serve_until_signalled",
    "wait_for_broker",
]
