"""``autoprune serve STUDY``: the front explorer on http://127.0.0.1:PORT/ until Ctrl-C."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the front explorer (an interactive page of the Pareto fronts) on loopback")
    p.add_argument("study", help="study directory")
    p.add_argument("--port", type=int, default=8050, help="port on 127.0.0.1 (default: 8050; 0 takes a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.core.errors import AutopruneError
    from autoprune.results.serve import explorer_server

    try:
        server = explorer_server(args.study, port=args.port)
    except OSError as err:
        raise AutopruneError(f"--port {args.port}: cannot listen on 127.0.0.1 ({err.strerror})") from None
    host, port = server.server_address[:2]
    print(f"front explorer of {args.study} at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0
