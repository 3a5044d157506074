"""CORS: which browser pages, served from other origins, may read the API's
answers. The headers flask-cors would send with the service's options
(`origins` and `expose_headers`, every other option at flask-cors's default),
without flask-cors's work on every request: with the default origins (a
regular expression), a request without an Origin header, as every
non-browser client sends, costs one dictionary lookup. tests/test_api.py
holds them to flask-cors's own, preflights included.

One difference, on purpose: flask-cors matches a regular expression from the
start of the origin only (`re.match`), so `https://app\\.example\\.com` also
lets `https://app.example.com.evil.net` read the answers. Here the pattern must
match the whole origin (`re.fullmatch`).
"""

import re

ALLOWED_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
# Characters that make flask-cors read an origin as a regular expression.
_REGEX_HINTS = frozenset("*\\]?$^[]()")


class CrossOrigin:
    """`origins`: one origin, a regular expression that must match the whole
    Origin header (case-insensitive), or "*" for any; `expose_headers`: the
    answer's headers a page's script may read."""

    def __init__(self, origins: str, expose_headers: list[str]):
        # flask-cors answers a request without an Origin header too when the
        # origins are "*" (with "*") or one literal origin (with it).
        self.without_origin = "*" if origins == "*" else origins if _REGEX_HINTS.isdisjoint(origins) else None
        if origins == "*":
            origins = ".*"
        if _REGEX_HINTS.isdisjoint(origins):
            self.literal, self.pattern = origins.lower(), None
        else:
            self.literal, self.pattern = None, re.compile(origins, re.IGNORECASE)
        self.expose_headers = ", ".join(sorted(expose_headers))

    def allows(self, origin: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(origin) is not None
        return origin.lower() == self.literal

    def headers(self, environ: dict) -> list[tuple[str, str]]:
        """The CORS headers of an answer to the request whose WSGI environ this is."""
        origin = environ.get("HTTP_ORIGIN")
        if origin:
            if not self.allows(origin):
                return []
        elif self.without_origin is None:
            return []
        else:
            origin = self.without_origin
        headers = [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", self.expose_headers)]
        if environ.get("HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK") == "true":
            headers.append(("Access-Control-Allow-Private-Network", "false"))
        if environ["REQUEST_METHOD"] == "OPTIONS":
            requested_method = environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD", "").upper()
            if requested_method and requested_method in ALLOWED_METHODS:
                requested_headers = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS")
                if requested_headers:
                    allowed = ", ".join(sorted(name.strip() for name in requested_headers.split(",")))
                    if allowed:
                        headers.append(("Access-Control-Allow-Headers", allowed))
                headers.append(("Access-Control-Allow-Methods", ALLOWED_METHODS))
        if self.pattern is not None and origin != "*":
            # The answer depends on the Origin when more than one could match.
            headers.append(("Vary", "Origin"))
        return headers
