"""A fault injector: a real TCP proxy that can cut connections after N bytes.

Dropping a connection in the middle of a blob cannot be provoked with the registry alone; this proxy
forwards to it unchanged until armed, counts the bytes it delivers, and then cuts every connection
after `cut_after` downstream bytes, exactly like a network that drops mid-download.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class FaultProxy:
    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.cut_after: int | None = None
        self.bytes_downstream = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_downstream = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._server.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            budget = {"sent": 0}
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, budget), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, budget: dict | None) -> None:
        try:
            source.settimeout(None)
            while not self._stopping.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if budget is not None:
                    limit = self.cut_after
                    if limit is not None and budget["sent"] + len(data) > limit:
                        data = data[: max(0, limit - budget["sent"])]
                        self._count(len(data))
                        sink.sendall(data)
                        break  # cut: close both sides mid-body
                    budget["sent"] += len(data)
                    self._count(len(data))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_downstream += n
