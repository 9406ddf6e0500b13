"""The image's HEALTHCHECK probe (genserve.healthcheck): the URL and TLS context it picks from the server's
settings, and its exit status. `make image-test` runs it in the container, with and without TLS."""

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from genserve import healthcheck
from service.settings import Settings


def test_plain_http_without_tls():
    assert healthcheck.url_and_context(Settings(port=8123)) == ("http://127.0.0.1:8123/healthz", None)


def test_https_without_verification_with_tls(tmp_path):
    url, context = healthcheck.url_and_context(Settings(port=8123, tls_cert=tmp_path / "c.pem",
                                                        tls_key=tmp_path / "k.pem"))
    assert url == "https://127.0.0.1:8123/healthz"
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname  # its own server, on the loopback


class Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_exit_status_follows_healthz(monkeypatch):
    monkeypatch.delenv("GENSERVE_TLS_CERT", raising=False)
    with HTTPServer(("127.0.0.1", 0), Answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv("GENSERVE_PORT", str(server.server_address[1]))
        assert healthcheck.main() == 0
        server.shutdown()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GENSERVE_PORT", str(s.getsockname()[1]))
    assert healthcheck.main() == 1
