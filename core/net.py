"""Addresses for torch.distributed rendezvous."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_address() -> tuple[str, int]:
    """This process's node IP (as Ray sees it, when inside Ray) and a free port on it."""
    ip = "127.0.0.1"
    try:
        import ray
        if ray.is_initialized():
            ip = ray.util.get_node_ip_address()
    except ImportError:
        pass
    return ip, free_port()
