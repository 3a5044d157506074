"""The service's JSON answers, handed to the WSGI server as they are."""

from flask import Response


class JsonResponse(Response):
    """A JSON answer whose body is already serialized (bytes). werkzeug's
    general way of answering (`Response.__call__`) copies and re-checks the
    headers and wraps the body for cases a JSON answer is not: a redirect's
    Location, a streamed or file body, callbacks on close, HEAD, 1xx, 204 and
    304. For a small request that is a large share of the app's own time, so
    a JSON answer skips it; a body that is not a list of bytes, callbacks on
    close, HEAD, 1xx, 204 and 304 still go werkzeug's way (so never set a
    Location on one: use a plain Response to redirect)."""

    default_mimetype = "application/json"

    def __call__(self, environ, start_response):
        status = self.status_code
        if (
            not self.is_sequence
            or self._on_close
            or environ["REQUEST_METHOD"] == "HEAD"
            or status < 200
            or status in (204, 304)
        ):
            return super().__call__(environ, start_response)
        start_response(self.status, self.headers.to_wsgi_list())
        return self.response
