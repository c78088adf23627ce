"""The client address: the socket peer unless that peer is a trusted proxy.

Behind trusted proxies the client is the right-most address in ``X-Forwarded-For`` that is not
itself trusted; anything left of it was written by the client and proves nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_VERDICTS_MAX = 4096


class TrustedProxies:
    """Which peers may tell us the client's address.

    ``TrustedProxies(["127.0.0.0/8"]).client_ip("127.0.0.1", [b"6.6.6.6, 1.2.3.4"])``
    -> ``"1.2.3.4"``.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cidrs
        )
        # False when no proxy is trusted: the client is always the socket peer.
        self.enabled = bool(self._networks)
        # address -> trusted? Peers are few (the load balancers), so each is parsed once per
        # process instead of twice per request; bounded, as X-Forwarded-For hops come here too.
        self._verdicts: dict[str, bool] = {}

    def trusts(self, address: str) -> bool:
        if not self.enabled:
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            if len(self._verdicts) >= _VERDICTS_MAX:
                self._verdicts.clear()
            verdict = self._verdicts[address] = self._in_networks(address)
        return verdict

    def _in_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    def client_ip(self, peer: str, forwarded_for: list[bytes]) -> str:
        """Resolve the client from the peer and every ``X-Forwarded-For`` header, in order."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [h.strip() for value in forwarded_for for h in value.decode("latin-1").split(",")]
        for hop in reversed(hops):
            address = _parse_hop(hop)
            if address is None:
                return peer  # a malformed hop: stop trusting the chain here
            if not self.trusts(address):
                return address
        return peer if not hops else (_parse_hop(hops[0]) or peer)


def _parse_hop(hop: str) -> str | None:
    if hop.startswith("[") and "]" in hop:  # "[2001:db8::1]:443"
        hop = hop[1 : hop.index("]")]
    elif hop.count(":") == 1:  # "1.2.3.4:5678"
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None
