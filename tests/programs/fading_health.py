"""Answers GET /health on $FLOWCTL_HEALTH_PORT: 200 for the first argv[1] requests, then
500, while the process lives on (a program that hangs but does not exit)."""

import http.server
import os
import sys

answered = 0
healthy_for = int(sys.argv[1]) if len(sys.argv) > 1 else 3


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global answered
        answered += 1
        self.send_response(200 if answered <= healthy_for else 500)
        self.end_headers()

    def log_message(self, *args):
        pass


print("health server up", flush=True)
port = int(os.environ["FLOWCTL_HEALTH_PORT"])
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
