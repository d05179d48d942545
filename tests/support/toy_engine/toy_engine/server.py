"""The toy engine's process: an OpenAI-compatible chat server on a Unix socket that answers with a fixed text.

`python -m toy_engine.server SOCKET REPLY_FILE`. Streams the reply word by word as server-sent events when asked.
"""

from __future__ import annotations

import json
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> None:
    socket_path, reply_file = sys.argv[1], sys.argv[2]
    reply = Path(reply_file).read_text(encoding="utf-8").strip()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def address_string(self) -> str:  # a Unix socket has no client address
            return "engine"

        def log_message(self, format: str, *args: object) -> None:
            print("toy-server:", format % args, flush=True)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in ("/health", "/v1/models"):
                self._send(200, json.dumps({"object": "list", "data": [{"id": "model", "object": "model"}]}).encode())
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": {"message": "the toy engine only chats"}}')
                return
            words = len(reply.split())
            usage = {"prompt_tokens": 1, "completion_tokens": words, "total_tokens": 1 + words}
            if not body.get("stream"):
                answer = {"id": "toy-1", "object": "chat.completion", "created": int(time.time()),
                          "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": reply}}], "usage": usage}
                self._send(200, json.dumps(answer).encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            words = reply.split(" ")
            for n, word in enumerate(words):
                chunk = {"id": "toy-1", "object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": word if n == 0 else " " + word},
                                      "finish_reason": None}]}
                self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            final = {"id": "toy-1", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._chunk(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    Path(socket_path).unlink(missing_ok=True)
    with _UnixHTTPServer(socket_path, Handler) as server:
        print("toy-server: listening on", socket_path, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
