"""Command line: ``python -m airflow_provider_batch.emulator`` (or ``openai-batch-emulator``).

Every flag has an environment variable, ``BATCH_EMULATOR_<FLAG>`` (``--fault-rate`` is
``BATCH_EMULATOR_FAULT_RATE``); flags win. The first line printed is what a client is configured
with: the base URL of an OpenAI client, ``http://HOST:PORT/v1``; under ``--dialect azure``, the
``azure_endpoint`` of an ``AzureOpenAI`` client, ``http://HOST:PORT`` (a plain OpenAI client takes
``http://HOST:PORT/openai/v1``). With ``--port 0`` the port is picked from the free ones.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

ENV_PREFIX = "BATCH_EMULATOR_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openai-batch-emulator",
        description="A local OpenAI-compatible Files + Batches server (SQLite-backed).",
        epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG>.",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    server.add_argument("--data-dir", type=Path, help="state directory (default: a new temporary directory)")
    server.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' on every request (azure: 'api-key: KEY')"
    )
    server.add_argument(
        "--dialect",
        choices=("openai", "azure"),
        default="openai",
        help="OpenAI's routes (/v1/...) or Azure OpenAI's (/openai/... with api-version, /openai/v1/...)",
    )
    server.add_argument("--log-level", default="warning")

    engine = parser.add_argument_group("processing")
    engine.add_argument("--upstream", help="forward each request line to this OpenAI-compatible base URL")
    engine.add_argument("--upstream-api-key", help="API key for --upstream (default: $OPENAI_API_KEY)")
    engine.add_argument("--upstream-concurrency", type=int, default=8)
    engine.add_argument("--time-scale", type=float, default=1.0, help="emulated seconds per real second")
    engine.add_argument("--validating-delay", type=float, default=0.0, help="seconds spent validating")
    engine.add_argument("--line-delay", type=float, default=0.0, help="seconds spent on each request line")
    engine.add_argument("--finalizing-delay", type=float, default=0.0, help="seconds spent finalizing")
    engine.add_argument("--cancelling-delay", type=float, default=0.0, help="seconds spent cancelling")
    engine.add_argument(
        "--shuffle-output",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write result lines out of input order, as OpenAI may",
    )
    engine.add_argument(
        "--enqueued-token-limit",
        type=int,
        default=0,
        help="per-model quota of enqueued input tokens (0: off)",
    )
    engine.add_argument(
        "--enqueued-token-limits",
        default="",
        metavar="MODEL=N,...",
        help="the quota for named models, over --enqueued-token-limit (0: none for that model)",
    )

    azure = parser.add_argument_group("azure dialect only")
    azure.add_argument(
        "--file-processing-delay", type=float, default=0.5, help="seconds an upload stays 'pending'"
    )
    azure.add_argument(
        "--max-files-without-expiry", type=int, default=500, help="quota of files without expiry"
    )
    azure.add_argument(
        "--token-limit-fail-fast",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="refuse a batch over --enqueued-token-limit at create (400) instead of failing it",
    )

    faults = parser.add_argument_group("transient faults (API routes only)")
    faults.add_argument("--fault-rate", type=float, default=0.0, help="probability of a fault per request")
    faults.add_argument("--fault-kinds", default="429,500,503,drop", help="from 429,500,503,drop,drop_after")
    faults.add_argument("--fault-routes", default="", help="regex on 'METHOD /path'; empty matches all")
    faults.add_argument("--fault-count", type=int, default=-1, help="stop after this many faults (-1: never)")
    faults.add_argument("--fault-seed", type=int, help="seed for reproducible faults")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    faults.add_argument("--retry-after", type=float, default=0.1, help="seconds announced on injected 429s")
    return parser


def _env_defaults(parser: argparse.ArgumentParser) -> None:
    """Let ``BATCH_EMULATOR_<FLAG>`` set any flag's default."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = ENV_PREFIX + action.dest.upper()
        value = os.environ.get(name)
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            action.default = value.lower() in {"1", "true", "yes"}
        else:
            try:
                action.default = action.type(value) if callable(action.type) else value
            except ValueError:  # a usage error, as the same value given as a flag would be
                parser.error(f"environment variable {name}: invalid value {value!r}")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    _env_defaults(parser)
    args = parser.parse_args(argv)
    # SIGTERM is the normal way to stop the server, so it exits with 0: uvicorn stops gracefully on
    # it and then re-raises it, which would otherwise end the process with -SIGTERM. Until the
    # server runs, SIGTERM is held back: raised in the middle of the start-up (uvicorn configuring
    # logging, say) it would break whatever was under way, with a traceback and exit code 1.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    import uvicorn

    from airflow_provider_batch.emulator.app import create_app
    from airflow_provider_batch.emulator.engines import EchoEngine, Engine, UpstreamEngine
    from airflow_provider_batch.emulator.settings import Settings, apply_changes

    settings = Settings()
    try:
        apply_changes(
            settings,
            {
                "time_scale": args.time_scale,
                "validating_delay": args.validating_delay,
                "line_delay": args.line_delay,
                "finalizing_delay": args.finalizing_delay,
                "cancelling_delay": args.cancelling_delay,
                "shuffle_output": args.shuffle_output,
                "enqueued_token_limit": args.enqueued_token_limit,
                "enqueued_token_limits": args.enqueued_token_limits,
                "faults": {
                    "rate": args.fault_rate,
                    "kinds": args.fault_kinds,
                    "routes": args.fault_routes,
                    "count": args.fault_count,
                    "seed": args.fault_seed,
                    "latency": args.latency,
                    "retry_after": args.retry_after,
                },
                "azure": {
                    "file_processing_delay": args.file_processing_delay,
                    "max_files_without_expiry": args.max_files_without_expiry,
                    "token_limit_fail_fast": args.token_limit_fail_fast,
                },
            },
        )
    except ValueError as exc:
        parser.error(str(exc))
    if settings.time_scale <= 0:
        parser.error("--time-scale must be positive")

    engine: Engine = EchoEngine()
    if args.upstream:
        key = args.upstream_api_key or os.environ.get("OPENAI_API_KEY")
        engine = UpstreamEngine(args.upstream, key, concurrency=args.upstream_concurrency)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be opened ({exc.strerror})"
        parser.exit(
            1,
            f"{parser.prog}: port {args.port} on {args.host} {reason}; stop what uses it, or choose"
            " another with --port (0 picks a free one).\n",
        )
    sock.listen(2048)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="openai-batch-emulator-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(data_dir, settings=settings, engine=engine, api_key=args.api_key, dialect=args.dialect)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    # Connections queue on the listening socket from here on, so the URL is usable at once.
    root = f"http://{shown_host}:{port}"
    print(root if args.dialect == "azure" else f"{root}/v1", flush=True)
    print(f"data dir: {data_dir}", file=sys.stderr, flush=True)

    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn installs its own SIGINT/SIGTERM handlers that stop the server gracefully once it runs;
    # until then SIGTERM and SIGHUP only ask it to stop. A held SIGTERM is delivered on unblocking: a
    # handler that raised there could raise inside a garbage-collection callback, where the exception
    # is ignored and the signal lost; a flag is never lost, and the server stops as soon as it starts.
    stop = lambda *_: setattr(server, "should_exit", True)  # noqa: E731
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
