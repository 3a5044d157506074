"""The image's HEALTHCHECK: exit 0 when the service in this container answers
its readiness probe (a model is loaded and passes its sample check).

Only the standard library: it starts for every check."""

import os
import sys
import urllib.request

host = os.environ.get("DIABETES_HOST", "0.0.0.0")
if host in ("0.0.0.0", "", "::"):
    host = "127.0.0.1"
url = f"http://{host}:{os.environ.get('DIABETES_PORT', '5000')}/v2/health/ready"
try:
    with urllib.request.urlopen(url, timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as error:
    print(f"{url}: {error}", file=sys.stderr)
    sys.exit(1)
