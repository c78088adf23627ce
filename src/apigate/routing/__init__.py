"""Routing: the canonical path and the route table."""

from apigate.routing.canonical import BadPath, canonical_path
from apigate.routing.router import Match, MethodNotAllowed, Router, host_without_port

__all__ = ["BadPath", "Match", "MethodNotAllowed", "Router", "canonical_path", "host_without_port"]
