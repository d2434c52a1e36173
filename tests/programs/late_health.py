"""Answers GET /health with 200 on $FLOWCTL_HEALTH_PORT, but only after argv[1] seconds."""

import http.server
import os
import sys
import time


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
print("health server up", flush=True)
port = int(os.environ["FLOWCTL_HEALTH_PORT"])
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
