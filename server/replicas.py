"""Calling several zoo servers (replicas) as one: the gRPC target of a list of addresses, and the
service config that spreads calls over them with gRPC's `round_robin` policy and retries the calls
that are safe to repeat on another replica when one fails or goes away.

A `--server` value is one of:
- `HOST:PORT`: gRPC's DNS resolver returns every address record of HOST, and round_robin uses
  them all (a Kubernetes headless Service is such a name);
- `HOST:PORT,HOST:PORT,...`: these replicas; host names are resolved once, here;
- any target gRPC understands with a scheme (`dns:///name:8500`, `ipv4:10.0.0.1:8500,10.0.0.2:8500`,
  `unix:/run/zoo.sock`), passed as is.

Safe to retry (no effect but the answer, and the same answer again): ListModels, GetModelInfo,
Classify, Embed, Tag, Answer, and Generate/GenerateStream when greedy or seeded (`is_repeatable`). A sampled
generation without a seed is sent on a channel without retries: repeated, it would answer
differently. A stream is retried only until its first message arrives (gRPC's rule). The policy
retries UNAVAILABLE (a replica down, unreachable or draining) up to 5 attempts in all.
"""

import ipaddress
import json
import socket

from zoo.errors import ZooError

SERVICE = "zoo.v1.InferenceService"
RETRIED = ("ListModels", "GetModelInfo", "Classify", "Embed", "Tag", "Answer", "Generate", "GenerateStream")
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def service_config(retries=True):
    """The channel's service config (JSON): round_robin over every address, with `retries` the
    retry policy on the methods that are safe to repeat."""
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries:
        config["methodConfig"] = [{"name": [{"service": SERVICE, "method": m} for m in RETRIED],
                                   "retryPolicy": RETRY_POLICY}]
    return json.dumps(config)


def _split(address):
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ZooError(f"--server {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def grpc_target(servers):
    """(gRPC target, the host name certificates are checked against or None) of a `--server` value."""
    servers = servers.strip()
    if "://" in servers or servers.split(":", 1)[0] in ("dns", "ipv4", "ipv6", "unix", "unix-abstract"):
        return servers, None
    addresses = [a for a in servers.split(",") if a.strip()]
    if len(addresses) == 1:
        _split(addresses[0])  # checked: a clear error for a value without a port
        return addresses[0].strip(), None
    resolved, names = [], []
    for address in addresses:
        host, port = _split(address)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            names.append(host)
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise ZooError(f"--server: cannot resolve {host!r} ({e.strerror})") from None
            ips = sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=lambda a: (a.version, int(a)))
            ip = next((a for a in ips if a.version == 4), ips[0])
        resolved.append((ip, port))
    versions = {ip.version for ip, _ in resolved}
    if len(versions) > 1:
        raise ZooError("--server: give replicas all IPv4 or all IPv6 (gRPC takes one address family per list)")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved), (names[0] if names else None)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in resolved), (names[0] if names else None)


def is_repeatable(request):
    """Whether a GenerateRequest gives the same answer when sent again: greedy, or seeded."""
    sampling = request.sampling
    return sampling.HasField("seed") or (sampling.HasField("temperature") and sampling.temperature == 0)
