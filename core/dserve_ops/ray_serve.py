"""Ray Serve deployment of dserve: the same Starlette app as `dserve serve`, one replica per GPU.

    pip install "dserve[ray]"          # ray[serve]; Ray is not a core dependency
    dserve ray-serve --min-replicas 1 --max-replicas 8 -- --model GSAI-ML/LLaDA-8B-Instruct

Each replica builds the app with `dserve.server.create_app(settings)` inside its Ray actor,
loads the model and only then reports itself started (so Ray routes no request to a replica
whose model is still loading); Ray Serve's HTTP proxy on `--port` routes the OpenAI API to the
replicas and autoscales them between `--min-replicas` and `--max-replicas` on the number of
ongoing requests per replica (`--target-ongoing-requests`). A replica asks Ray for
`--num-gpus-per-replica` GPUs (default: 1 when the Ray cluster has GPUs, else 0), so one
replica runs per GPU. Every response carries `x-dserve-replica` (the Ray replica id) and
`x-dserve-pid` headers.

On an existing cluster (`ray start --head` ..., KubeRay) pass `--address auto`, or deploy the
application builder with Ray's own CLI:

    serve run dserve_ops.ray_serve:app_builder model=GSAI-ML/LLaDA-8B-Instruct max_replicas=4

`app_builder(args)` takes the same keys: any `Settings` field plus the deployment options
`min_replicas`, `max_replicas`, `num_replicas`, `target_ongoing_requests`,
`max_ongoing_requests`, `num_gpus_per_replica`, `num_cpus_per_replica`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any

DEPLOYMENT_NAME = "dserve"
APP_NAME = "dserve"
INSTALL_HINT = 'Ray Serve is not installed: pip install "dserve[ray]"  (or: pip install "ray[serve]>=2.10")'


def _import_ray():
    try:
        import ray
        from ray import serve
    except ImportError as exc:  # Ray is an optional extra
        raise RuntimeError(INSTALL_HINT) from exc
    return ray, serve


@dataclass
class DeploymentOptions:
    min_replicas: int = 1
    max_replicas: int = 1
    num_replicas: int | None = None  # fixed count: no autoscaling
    target_ongoing_requests: float | None = None  # default: the server's max batch size
    max_ongoing_requests: int | None = None  # default: twice the max batch size
    num_gpus_per_replica: float | None = None  # default: 1 when the cluster has GPUs, else 0
    num_cpus_per_replica: float = 1.0


# --------------------------------------------------------------------------- the replica's ASGI app


class LazyApp:
    """A picklable ASGI app that builds dserve's real app inside the replica.

    Ray Serve copies the ingress app into each replica with pickle; a built dserve app holds a
    model, threads and a plugin manager, so this carries only the settings and builds the app on
    the first ASGI event (the lifespan startup Ray runs when the replica starts). Startup
    completes once the model is loaded (startup fails if it does not load), and every HTTP
    response gets `x-dserve-replica` / `x-dserve-pid` headers.
    """

    def __init__(self, settings: dict[str, Any], ready_timeout: float = 3600.0):
        self.settings = settings
        self.ready_timeout = ready_timeout
        self._app = None

    def __getstate__(self):
        return {"settings": self.settings, "ready_timeout": self.ready_timeout, "_app": None}

    @property
    def app(self):
        if self._app is None:
            from dserve.logs import configure_logging
            from dserve.server import create_app
            from dserve.settings import Settings

            settings = Settings(**self.settings)
            configure_logging(settings.log_json, settings.log_level)
            self._app = create_app(settings)
        return self._app

    @property
    def service(self):
        return self.app.state.dserve

    @staticmethod
    def replica_id() -> str:
        try:
            from ray import serve

            ctx = serve.get_replica_context()
            tag = getattr(ctx, "replica_tag", None)
            if tag is None and getattr(ctx, "replica_id", None) is not None:
                tag = getattr(ctx.replica_id, "unique_id", None) or str(ctx.replica_id)
            return str(tag)
        except Exception:  # noqa: BLE001 - not in a replica (tests, plain ASGI use)
            return f"pid-{os.getpid()}"

    async def __call__(self, scope, receive, send):
        app = self.app
        if scope["type"] == "lifespan":
            return await app(scope, receive, self._lifespan_send(send))
        if scope["type"] != "http":
            return await app(scope, receive, send)
        extra = [(b"x-dserve-replica", self.replica_id().encode()), (b"x-dserve-pid", str(os.getpid()).encode())]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await app(scope, receive, send_with_headers)

    def _lifespan_send(self, send):
        async def lifespan_send(message):
            if message["type"] == "lifespan.startup.complete":
                error = await self._wait_loaded()
                if error:
                    message = {"type": "lifespan.startup.failed", "message": f"dserve model load failed: {error}"}
            await send(message)

        return lifespan_send

    async def _wait_loaded(self) -> str | None:
        service = self.service
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not service.ready:
            if service.load_error:
                return str(service.load_error)
            if loop.time() > deadline:
                return f"not loaded after {self.ready_timeout:.0f}s"
            await asyncio.sleep(0.2)
        return None


# --------------------------------------------------------------------------- the deployment


def _cluster_has_gpus(ray) -> bool:
    try:
        return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    except Exception:  # noqa: BLE001
        return False


def build_deployment(settings, options: DeploymentOptions | None = None):
    """The Ray Serve application (a bound deployment) serving `create_app(settings)`."""
    ray, serve = _import_ray()
    options = options or DeploymentOptions()
    settings_dict = settings.model_dump(mode="json")
    lazy = LazyApp(settings_dict)

    @serve.ingress(lazy)
    class DserveDeployment:
        """One dserve engine (one model copy) per replica; Ray Serve's proxy routes to them."""

        def check_health(self):  # Ray calls this periodically; raising marks the replica unhealthy
            app = getattr(self, "_asgi_app", None)
            service = getattr(app, "_app", None) and app.service
            if service is not None and service.load_error:
                raise RuntimeError(f"model load failed: {service.load_error}")

    num_gpus = options.num_gpus_per_replica
    if num_gpus is None:
        num_gpus = 1 if _cluster_has_gpus(ray) else 0
    batch = settings.max_batch_size
    target = options.target_ongoing_requests if options.target_ongoing_requests is not None else float(batch)
    max_ongoing = options.max_ongoing_requests if options.max_ongoing_requests is not None else 2 * batch
    config: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": options.num_cpus_per_replica},
        "max_ongoing_requests": max_ongoing,
        "graceful_shutdown_timeout_s": settings.shutdown_grace,
    }
    if options.num_replicas is not None:
        config["num_replicas"] = options.num_replicas
    else:
        if options.min_replicas < 0 or options.max_replicas < max(options.min_replicas, 1):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        config["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "initial_replicas": max(options.min_replicas, 1),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": target,
        }
    return serve.deployment(**config)(DserveDeployment).bind()


_DEPLOYMENT_KEYS = {f for f in DeploymentOptions.__dataclass_fields__}


def app_builder(args: dict[str, Any]):
    """Application builder for Ray's CLI: `serve run dserve_ops.ray_serve:app_builder model=... max_replicas=4`."""
    from dserve.settings import Settings

    args = dict(args or {})
    opts: dict[str, Any] = {}
    for key in list(args):
        if key in _DEPLOYMENT_KEYS:
            value = args.pop(key)
            opts[key] = (
                None
                if value in (None, "")
                else (
                    int(value)
                    if key in ("min_replicas", "max_replicas", "num_replicas", "max_ongoing_requests")
                    else float(value)
                )
            )
    return build_deployment(Settings(**args), DeploymentOptions(**opts))


# --------------------------------------------------------------------------- the CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ray-serve",
        help="serve with Ray Serve: autoscaled replicas, one per GPU",
        description="Run dserve as a Ray Serve application: the same app as `dserve serve`, one replica per GPU, "
        "autoscaled between --min-replicas and --max-replicas. Serve flags go after `--`; its --host/--port "
        'set Ray Serve\'s HTTP proxy. Needs the `ray` extra: pip install "dserve[ray]".',
        epilog="example: dserve ray-serve --min-replicas 1 --max-replicas 8 -- --model GSAI-ML/LLaDA-8B-Instruct",
    )
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (default 1)")
    p.add_argument("--max-replicas", type=int, help="autoscaling upper bound (default: the cluster's GPUs, else --min-replicas)")
    p.add_argument("--num-replicas", type=int, help="a fixed number of replicas (turns autoscaling off)")
    p.add_argument(
        "--target-ongoing-requests",
        type=float,
        help="autoscaling target of ongoing requests per replica (default: the max batch size)",
    )
    p.add_argument(
        "--max-ongoing-requests", type=int, help="requests Ray sends one replica at once (default: twice the max batch size)"
    )
    p.add_argument("--num-gpus-per-replica", type=float, help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--num-cpus-per-replica", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument(
        "--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: $RAY_ADDRESS, else a new local Ray"
    )
    p.add_argument("--no-dashboard", action="store_true", help="a new local Ray starts without its dashboard (less memory)")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="`--` then `dserve serve` flags")
    p.set_defaults(handler=ray_serve_command)


def _settings_from_args(serve_args: list[str]):
    from dserve.cli import serve_parser
    from dserve.settings import Settings

    ns = serve_parser().parse_args(serve_args)
    overrides = {k: v for k, v in vars(ns).items() if k not in ("command", "handler") and v is not None}
    return Settings(**overrides)


def ray_serve_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    serve_args = list(args.serve_args or [])
    if serve_args and serve_args[0] == "--":
        serve_args = serve_args[1:]
    try:
        settings = _settings_from_args(serve_args)
    except ValidationError as exc:
        print(f"dserve ray-serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if getattr(settings, "gpus", None) or getattr(settings, "gpu_ids", None):
        print(
            "dserve ray-serve: --gpus/--gpu-ids start dserve's own multi-GPU front; under Ray Serve each replica is one engine: use --num-gpus-per-replica and --min/--max-replicas",
            file=sys.stderr,
        )
        return 2
    if getattr(settings, "dcp_path", None):
        from dserve_ops.dcp import prepare_settings

        settings = prepare_settings(settings)  # convert the DCP checkpoint once, before the replicas start
    try:
        ray, serve = _import_ray()
    except RuntimeError as exc:
        print(f"dserve ray-serve: {exc}", file=sys.stderr)
        return 1
    from dserve.logs import configure_logging

    configure_logging(settings.log_json, settings.log_level)
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    init_kwargs: dict[str, Any] = {"address": args.address, "ignore_reinit_error": True}
    if local and args.no_dashboard:
        init_kwargs["include_dashboard"] = False
    ray.init(**init_kwargs)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    max_replicas = args.max_replicas
    if max_replicas is None and args.num_replicas is None:
        max_replicas = max(gpus, args.min_replicas, 1)
    options = DeploymentOptions(
        min_replicas=args.min_replicas,
        max_replicas=max_replicas or 1,
        num_replicas=args.num_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        max_ongoing_requests=args.max_ongoing_requests,
        num_gpus_per_replica=args.num_gpus_per_replica,
        num_cpus_per_replica=args.num_cpus_per_replica,
    )
    try:
        app = build_deployment(settings, options)
    except ValueError as exc:
        print(f"dserve ray-serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # replaces Ray's handler, which aborts the driver
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": settings.host, "port": settings.port})
    print(f"dserve ray-serve: deploying ({asdict(options)}, cluster GPUs: {gpus}) ...", flush=True)
    serve.run(app, name=APP_NAME, route_prefix="/")
    if not stop.is_set():
        print(f"dserve ray-serve: ready on http://{settings.host}:{settings.port}/v1  (Ray Serve proxy)", flush=True)
    while not stop.wait(1.0):  # a timed wait: signal handlers run between waits
        pass
    print("dserve ray-serve: shutting down", flush=True)

    def shutdown() -> None:
        try:
            serve.shutdown()  # replicas get graceful_shutdown_timeout_s (--shutdown-grace) to finish
        finally:
            ray.shutdown()

    worker = threading.Thread(target=shutdown, name="dserve-ray-shutdown", daemon=True)
    worker.start()
    worker.join(settings.shutdown_grace + 30)
    if worker.is_alive():  # e.g. the raylet already died (a SIGTERM sent to the whole process group)
        print("dserve ray-serve: Ray did not shut down in time; stopping it", file=sys.stderr, flush=True)
        if local:
            try:
                ray._private.worker._global_node.kill_all_processes(check_alive=False, allow_graceful=False)
            except Exception:  # noqa: BLE001 - best effort: private API
                pass
        os._exit(1)
    return 0
