"""The service's edge in front of other workers: HAProxy with
diabetes/haproxy.cfg and the values diabetes/edge.py gives it from the
service's settings (the serving notebook's defaults), listening on 127.0.0.1
at --port, its workers at 127.0.0.1:--workers-port. This process becomes
HAProxy (exec), in the foreground; the benchmark stops it with SIGTERM.

    python -m bench.edge_proxy --port PORT --workers-port PORT --run-dir DIR
"""

import argparse
import os
from pathlib import Path

from diabetes.edge import CONFIG, HAPROXY, check_config, edge_environment, write_run_files
from diabetes.settings import notebook_defaults


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers-port", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    arguments = parser.parse_args(argv)
    settings = {**notebook_defaults(), "host": "127.0.0.1", "port": arguments.port}
    settings["workers_port"] = arguments.workers_port
    arguments.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_run_files(arguments.run_dir)
    environment = {**os.environ, **edge_environment(settings, arguments.run_dir)}
    check_config(environment)
    os.execvpe(HAPROXY, [HAPROXY, "-db", "-f", str(CONFIG)], environment)


if __name__ == "__main__":
    main()
