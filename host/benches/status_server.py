#!/usr/bin/env python3
"""A status endpoint on loopback for the measured runs: every GET answers
200 with `{"cpu_usage": 42, "memory_usage": 51}`, below every default
threshold, so the rules under measurement evaluate without alerting.

Imported (`start()` returns the running server), or run as
`python3 status_server.py PORTFILE`, which writes the port it listens on
to PORTFILE and serves until killed.
"""
import http.server, json, sys, threading

BODY = json.dumps({"cpu_usage": 42, "memory_usage": 51}).encode()


class Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def start():
    """Serves on a free loopback port in a daemon thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_port))
    server.serve_forever()
