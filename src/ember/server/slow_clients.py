"""Slow-client limits below the ASGI app: a connection must deliver a request's headers within a deadline.

    ember serve --header-timeout 10 --keep-alive-timeout 5 --max-connections 1024

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and the number of connections
(`limit_concurrency`, beyond it 503), but a client that sends its headers one byte at a time (slowloris)
holds its connection forever. This h11 protocol closes a connection whose request headers have not all
arrived `header_timeout` seconds after it opened, or after its previous response ended. Slow bodies are
bounded in the ASGI layer (middleware.BodyLimit's `body_timeout`).
"""

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(header_timeout: float):
    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            waiting_after = self.cycle  # the request whose successor's headers we wait for
            self._header_timer = self.loop.call_later(header_timeout, self._expire, waiting_after)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self, waiting_after) -> None:
            self._header_timer = None
            if self.cycle is waiting_after and not self.transport.is_closing():  # no new request started
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers of a new request are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
