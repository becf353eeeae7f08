"""Runs an ASGI app with uvicorn on a background thread: for tests, notebooks and benchmarks that
want emulated engines and a router in one process.

    with BackgroundServer(create_engine_app(EmulatedEngine())) as srv:
        httpx.get(srv.url + "/v1/models")
"""

import socket
import threading
import time


class BackgroundServer:
    """``app`` served on ``host`` at a free port (``url``) by uvicorn on its own thread and event loop."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        """Starts serving (once) and waits until uvicorn has started."""
        if not self.thread.is_alive() and not self.server.started:
            self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Asks uvicorn to exit and waits for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start() if not self.server.started else self

    def __exit__(self, *exc) -> None:
        self.stop()
