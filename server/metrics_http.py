"""The Prometheus metrics endpoint (`--metrics-port`), under the same protection as the API.

prometheus-client's own `start_http_server` serves TLS but has no token check, so its WSGI app
(`make_wsgi_app`) is served here by the standard library's WSGI server, behind two checks:
- with `--tls-cert`, HTTPS with the server's certificate (and `--tls-client-ca`: client
  certificates required), as on the gRPC port;
- with `--auth-tokens`, `Authorization: Bearer TOKEN` of a token allowed every model (the metrics
  name every model, so a token limited to some models may not read them): 401 or 403 otherwise.
"""

import socket
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # no access log on stderr (it is the server's log)
        pass


def _protected(app, tokens):
    def guarded(environ, start_response):
        grant = tokens.grant_of_header(environ.get("HTTP_AUTHORIZATION"))
        if grant is None or not grant.unrestricted:
            status = "401 Unauthorized" if grant is None else "403 Forbidden"
            start_response(status, [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"metrics need a token allowed every model: Authorization: Bearer TOKEN\n"]
        return app(environ, start_response)

    return guarded


def start(host, port, tokens=None, ssl_context=None):
    """Serves /metrics on a daemon thread; returns the port it listens on."""
    app = make_wsgi_app()
    if tokens is not None:
        app = _protected(app, tokens)
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host.strip("[]"), port, app, server_class=server_class, handler_class=_QuietHandler)
    if ssl_context is not None:
        # The handshake runs on the request thread, so a client that never completes one blocks nobody.
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True, name="zoo-metrics").start()
    return server.server_port
