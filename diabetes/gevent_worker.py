"""gunicorn's gevent worker, made fair to every connection.

Asynchronous workers hold idle and slow clients in greenlets instead of
blocking on them (gunicorn_config.py); two changes keep one busy client from
delaying the others. Imported by gunicorn's processes only: gevent must not
load into a notebook's kernel.
"""

import gevent
from gunicorn.workers import ggevent

# New connections a worker accepts per turn of its event loop. gunicorn takes
# one when several workers share the socket, so that connections spread over
# the workers; but under load a turn serves every busy connection first, and
# a burst of new ones (a client's pool, idle connections reopened) queued
# ahead of a probe for seconds. A few per turn still spread a client's pool
# over both workers (eight sent most of a 16-connection load to one).
ACCEPTS_PER_TURN = 4


class StreamServerAcceptingFew(ggevent.StreamServer):
    """gunicorn sets `max_accept` itself once the server exists: this keeps ours."""

    @property
    def max_accept(self):
        return ACCEPTS_PER_TURN

    @max_accept.setter
    def max_accept(self, ignored):
        pass


class FairGeventWorker(ggevent.GeventWorker):
    def run(self):
        # The worker's run() builds its servers from this module-level name.
        ggevent.StreamServer = StreamServerAcceptingFew
        super().run()

    def handle_request(self, listener_name, request, sock, address):
        super().handle_request(listener_name, request, sock, address)
        # A keep-alive client that sends its next request as soon as it has
        # an answer finds this greenlet still reading, so it never waits and
        # never yields: one connection could keep the worker for itself.
        # Yielding after each request serves the connections in turn.
        gevent.sleep(0)
