"""The image's HEALTHCHECK: `python -m genserve.healthcheck` asks this machine's server for /healthz.

It reads the server's own settings (GENSERVE_PORT, GENSERVE_TLS_CERT): with TLS on it asks over https without
verifying the certificate, since it talks to its own server over the loopback, where the certificate's names
need not include 127.0.0.1. Exit status 0 when /healthz answers 200, else 1 (Docker's convention).
"""

import ssl
import sys
import urllib.request

from service.settings import Settings


def url_and_context(settings: Settings) -> tuple[str, ssl.SSLContext | None]:
    if settings.tls_cert is None:
        return f"http://127.0.0.1:{settings.port}/healthz", None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return f"https://127.0.0.1:{settings.port}/healthz", context


def main() -> int:
    url, context = url_and_context(Settings())
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as e:  # refused, timed out, TLS failed, or an HTTP error status
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
