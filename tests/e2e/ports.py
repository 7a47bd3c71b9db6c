"""Ports for the servers a test starts. Tests run in parallel (ctest -j), so a port found free
and then closed could be taken by another test before its server binds it, and a "down"
primary's port, where nothing listens for minutes, could be taken by another test's server.
So free_port keeps the port bound (not listening, no SO_REUSEADDR): connections to it are
refused, as to a down server, and no other process can bind it. The code that starts a server
on it calls release_port just before."""
import socket

_held = {}  # port -> the sockets holding it


def free_port(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    port = s.getsockname()[1]
    _held.setdefault(port, []).append(s)
    return port


def release_port(port):
    for s in _held.pop(int(port), []):
        s.close()


def release_all():
    """At the end of a test: its servers are stopped, and its ports go back."""
    for port in list(_held):
        release_port(port)
