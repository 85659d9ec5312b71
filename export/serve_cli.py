"""``captum-vit serve``: exported explainers behind an HTTP service with dynamic batching.

captum-vit export --model synthetic-vit --out out/synthetic-vit-pltx.onnx
captum-vit serve --model out/synthetic-vit-pltx.onnx --port 8000
curl -s -H 'Content-Type: image/png' --data-binary @image.png http://127.0.0.1:8000/v1/explain

Every argument and every model file is checked before the server starts; the server binds
first and loads the models in the background (``/readyz`` turns 200 when they are warm).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captum_vit.export.serving.config import ServeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="an exported .onnx explainer (repeat for several; NAME defaults to the file stem; the first is the default)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="largest dynamic batch (1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a request may wait for a batch to fill")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting per model before 503 + Retry-After")
    p.add_argument("--inference-workers", type=int, default=1, help="threads running onnxruntime (batches in flight)")
    p.add_argument("--intra-op-threads", type=int, default=0, help="onnxruntime threads per call (0: one per core)")
    p.add_argument("--decode-workers", type=int, default=2, help="threads decoding uploads and encoding PNGs")
    p.add_argument("--max-upload-bytes", type=int, default=10 * 1024 * 1024, help="largest request body (413 above)")
    p.add_argument("--max-image-side", type=int, default=4096, help="largest image width or height (413 above)")
    p.add_argument("--max-connections", type=int, default=256, help="open connections before uvicorn answers 503")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish requests on SIGTERM")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _check_listenable(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, as uvicorn will (``SO_REUSEADDR``), so that a port in
    use or an address this machine lacks is one line before the models load, not a failed start."""
    import errno
    import socket

    from captum_vit._cli_common import CLIError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CLIError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CLIError(f"--port {port}: {host}:{port} is in use (another server?)") from None
            raise CLIError(f"--host {host}: cannot listen on {host}:{port} ({e.strerror})") from None


def check(args: argparse.Namespace) -> ServeConfig:
    """The :class:`~captum_vit.export.serving.ServeConfig` for ``args``; a ``CLIError`` if any is wrong."""
    from captum_vit._cli_common import CLIError, input_file
    from captum_vit.export.onnx_export import read_metadata
    from captum_vit.export.serving.config import ServeConfig, parse_model_spec

    models = {}
    for spec in args.model:
        try:
            name, path = parse_model_spec(spec)
        except ValueError as e:
            raise CLIError(f"--model: {e}") from None
        if name in models:
            raise CLIError(f"--model: the name {name!r} is given twice; use NAME=PATH to tell them apart")
        input_file(path, "--model")
        try:
            meta = read_metadata(path)
        except ValueError as e:
            raise CLIError(f"--model: {e}") from None
        if meta.input_size[0] != 3:
            raise CLIError(f"--model: {path} takes {meta.input_size}; the service decodes RGB images")
        models[name] = path
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    _check_listenable(args.host, args.port)
    for flag, value in (("--max-connections", args.max_connections), ("--graceful-timeout", args.graceful_timeout)):
        if value <= 0:
            raise CLIError(f"{flag} must be positive, got {value}")
    try:
        return ServeConfig(
            models,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            inference_workers=args.inference_workers,
            intra_op_threads=args.intra_op_threads,
            decode_workers=args.decode_workers,
            max_upload_bytes=args.max_upload_bytes,
            max_image_side=args.max_image_side,
        )
    except ValueError as e:
        flag = "--" + str(e).split(" ")[0].replace("_", "-")
        raise CLIError(f"{flag}: {e}") from None


def run(args: argparse.Namespace) -> int:
    config = check(args)
    try:
        import uvicorn

        from captum_vit.export.serving import create_app
        from captum_vit.export.serving.telemetry import log_config
    except ImportError as e:
        from captum_vit._cli_common import CLIError

        raise CLIError(f"serving needs the serve extra: pip install 'captum_vit[serve]' ({e})") from None
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            log_config=log_config(args.log_level),
            access_log=False,
            limit_concurrency=args.max_connections,
            timeout_graceful_shutdown=args.graceful_timeout,
        )
    )
    # uvicorn re-raises the SIGTERM/SIGINT it caught once it has shut down gracefully; a handler
    # of ours turns that into a normal exit (status 0) instead of death by signal.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _stopped(signum: int, frame: object) -> None:
    """The signal arrived after uvicorn's shutdown: nothing is left to do."""


def main(argv: list[str] | None = None) -> int:
    """``python -m captum_vit.export.serve_cli``: the same command without the ``captum-vit`` front end."""
    from captum_vit._cli_common import CLIError

    parser = argparse.ArgumentParser(prog="captum-vit serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except CLIError as e:
        print(f"captum-vit serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
