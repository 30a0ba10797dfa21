"""Serving replicas behind Ray Serve ([serving] backend = "ray").

The Litestar app stays the one front door (auth, store, feedback, exploring turns, reward
features); what it hands to Ray Serve is generation only. Each replica runs the project's
own engine (assistant/engine.py: continuous batching, fused multi-LoRA), built from the same
config by the same `build_engine`, so a replica answers exactly what the local engine would.

Routing by adapter is Ray Serve's model multiplexing: the multiplexed model id of a request
is its adapter version (`model_id`: user id, version and the version's folder relative to the
adapters dir), Serve sends it to a replica that already holds that id, and on a miss the
replica loads it (`EngineReplica.adapter`, an LRU of [adapters] cache_size ids per replica,
the same size as the engine's own cache). A promotion is a new version, hence a new id:
the next request loads it wherever it lands, and the engine drops the user's older version
as it installs the newer one (Engine._activate); ids nobody asks for any more age out of
Serve's LRU. No replica restarts.

The replicas read adapters from their own `[server] data_dir`/adapters: on several nodes
that is shared storage (NFS, a mounted bucket) holding the same folders as the app's.

A replica lost mid-answer (its process killed, its node gone) surfaces as Ray's actor error:
before any text was streamed the request is sent again (Serve routes it to a live replica,
and its controller starts a replacement); after text was streamed it ends with
ServingUnavailable (HTTP 503, an SSE error event), never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from assistant.config import ROOT, Config, from_dict, to_dict
from assistant.engine import AdapterRef, Candidate, Delta, Engine, GenRequest, GenResult
from feedback_store.errors import ModelError, ServingUnavailable

log = logging.getLogger("assistant")
APP_NAME = "assistant-engine"       # the Serve application (one per Ray cluster)
# A request that lost its replica before any text is sent again this many times: one
# retry covers one dead replica; a second loss in a row means the service is in trouble.
RETRIES = 1
# The 1-token answer that installs an adapter on a replica when Serve loads its id.
WARMUP = GenRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=1, temperature=0)


# ---- the multiplexed model id ------------------------------------------------------------

def model_id(ref: AdapterRef | None, adapters_dir: Path) -> str:
    """The multiplexed model id of an adapter version: "<user>:<version>:<folder>", the
    folder relative to the adapters dir (shared storage: each node has its own mount);
    "" for the base (no multiplexing: any replica)."""
    if ref is None:
        return ""
    path = Path(ref.path)
    try:
        folder = str(path.resolve().relative_to(adapters_dir.resolve()))
    except ValueError:
        folder = str(path)          # outside the adapters dir: only absolute paths work
    return f"{ref.user_id}:{ref.version}:{folder}"


def parse_model_id(value: str, adapters_dir: Path) -> AdapterRef:
    """The AdapterRef a replica loads for a model id (its folder under this node's
    adapters dir). A folder that climbs out of it is refused."""
    try:
        user, version, folder = value.split(":", 2)
        ref = AdapterRef(int(user), int(version), adapters_dir / folder)
    except ValueError as exc:
        raise ModelError(f"not an adapter model id: {value!r}") from exc
    if not Path(folder).is_absolute() and ".." in Path(folder).parts:
        raise ModelError(f"adapter folder outside the adapters dir: {value!r}")
    return ref


# ---- the replica (runs in a Ray actor) ---------------------------------------------------

class ReplicaBase:
    """One engine replica. `deployment()` subclasses it with the multiplexed loader, whose
    LRU size comes from the config."""

    def __init__(self, config_data: dict) -> None:
        from assistant.cli import build_engine

        config = from_dict(config_data)
        self.engine: Engine = build_engine(config)
        self.adapters_dir = config.adapters_dir

    async def _load(self, value: str) -> AdapterRef:
        """Serve's loader for a model id: install the adapter now (a 1-token answer through
        it), so the replica holds it and an adapter that cannot load fails here, once."""
        ref = parse_model_id(value, self.adapters_dir)
        await self.engine.generate(replace(WARMUP, adapter=ref))
        return ref

    async def adapter(self, value: str) -> AdapterRef:      # replaced by the multiplexed one
        return await self._load(value)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta | GenResult]:
        """The engine's stream for `req` through the request's multiplexed adapter."""
        from ray import serve

        value = serve.get_multiplexed_model_id()
        adapter = await self.adapter(value) if value else None
        async for item in self.engine.stream(replace(req, adapter=adapter)):
            yield item

    def describe(self) -> dict:
        """Which replica this is and what it holds (tests, the admin's /health)."""
        from ray import serve

        context = serve.get_replica_context()
        return {"replica": context.replica_id.unique_id, "pid": os.getpid(),
                "loaded": list(self.engine.loaded), "rows": self.engine.health()["running_rows"]}


def deployment(config: Config) -> Any:
    """The Serve deployment of the engine for this config (not yet bound or run)."""
    from ray import serve

    class EngineReplica(ReplicaBase):
        @serve.multiplexed(max_num_models_per_replica=config.adapters.cache_size)
        async def adapter(self, value: str) -> AdapterRef:
            return await self._load(value)

    s = config.serving
    # A replica admits as many requests as its engine has batch rows; more wait in Serve's
    # router, which may then send them to another replica (loading the adapter there).
    return serve.deployment(EngineReplica, name="EngineReplica", num_replicas=s.replicas,
                            max_ongoing_requests=config.model.max_batch_rows,
                            ray_actor_options={"num_cpus": s.replica_cpus})


def _init_ray(config: Config, ray_init: dict) -> None:
    """ray.init, up to twice more if the node was too slow to come up: Ray gives a starting raylet
    a fixed 30 s to register, which a loaded machine can miss."""
    import ray

    # Workers import this checkout's packages (a local Ray: the same tree; a cluster: the
    # project installed on each node, where this path is simply absent).
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        try:
            ray.init(address=config.serving.ray_address or None, include_dashboard=False,
                     runtime_env={"env_vars": env}, logging_level=logging.WARNING,
                     log_to_driver=False, **ray_init)
            return
        except Exception as exc:
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            log.warning("Ray did not come up in time; starting it again")
            ray.shutdown()


def start(config: Config, **ray_init: Any) -> Any:
    """Connect to (or start) Ray, run the deployment, return its handle. `ray_init`: more
    arguments for ray.init (tests: num_cpus)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        _init_ray(config, ray_init)
    serve.start(proxy_location="Disabled")      # the Litestar app is the only front door
    return serve.run(deployment(config).bind(to_dict(config)), name=APP_NAME,
                     route_prefix=None)


# ---- the app's side ----------------------------------------------------------------------

def _replica_lost(exc: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError

    return isinstance(exc, RayActorError | ActorUnavailableError | DeploymentUnavailableError)


def _reraise(exc: BaseException, started: bool) -> None:
    """A replica's error as the app's: an adapter that failed to load stays ModelError
    (the chat code falls back past it); a lost replica is ServingUnavailable."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, ModelError):
        raise ModelError(str(exc.cause)) from exc
    if _replica_lost(exc):
        raise ServingUnavailable("the serving replica was lost mid-answer; please ask again"
                                 if started else "no serving replica could answer") from exc
    raise exc


class RayEngine:
    """The engine the app holds when backend = "ray": `generate` and `stream` go to the
    deployment; everything else (reward features, exploring pools, erasure, the tokenizer)
    is the app's local engine's, through attribute delegation."""

    def __init__(self, local: Engine, handle: Any, config: Config) -> None:
        self.local, self.handle, self.config = local, handle, config

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    async def generate(self, req: GenRequest) -> GenResult:
        async for item in self.stream(req):
            if isinstance(item, GenResult):
                return item
        raise ServingUnavailable("the serving replica ended the answer without a result")

    async def stream(self, req: GenRequest,
                     on_abandon: Callable[[GenResult], Awaitable[None]] | None = None,
                     ) -> AsyncIterator[Delta | GenResult]:
        """As Engine.stream: Deltas, then the GenResult (with the app's AdapterRef). If the
        consumer stops early the replica's generation is cancelled and what arrived goes to
        on_abandon (text per candidate, finish_reason 'cancelled')."""
        received: dict[int, str] = {}
        finished = False
        try:
            for attempt in range(RETRIES + 1):
                response = self._call(req)
                try:
                    async for item in response:
                        if isinstance(item, GenResult):
                            finished = True
                            yield replace(item, adapter=req.adapter)
                            return
                        received[item.index] = received.get(item.index, "") + item.text
                        yield item
                except Exception as exc:
                    if received or attempt == RETRIES or not _replica_lost(exc):
                        _reraise(exc, bool(received))
                    log.warning("serving replica lost before the answer began; retrying")
                finally:
                    if not finished:
                        response.cancel()       # the replica's engine stops at the next token
        finally:
            if not finished and on_abandon is not None and received:
                asyncio.ensure_future(on_abandon(_partial(req, received)))

    def _call(self, req: GenRequest) -> Any:
        """The streaming call to a replica holding the request's adapter (its own
        AdapterRef stays here: the replica resolves the id under its adapters dir)."""
        mid = model_id(req.adapter, self.config.adapters_dir)
        return self.handle.options(stream=True, multiplexed_model_id=mid).stream.remote(
            replace(req, adapter=None))

    def health(self) -> dict:
        s = self.config.serving
        return {"backend": "ray", "replicas": s.replicas, "ray_address": s.ray_address or None,
                "local": self.local.health()}

    def close(self) -> None:
        self.local.close()


def _partial(req: GenRequest, received: dict[int, str]) -> GenResult:
    cands = [Candidate(index=i, text=received.get(i, ""), finish_reason="cancelled")
             for i in range(req.n)]
    return GenResult(cands, 0, req.adapter)


def remote_engine(config: Config, local: Engine, handle: Any = None) -> Engine:
    """The app's engine for backend "ray": the deployment (started here unless a handle is
    given) in front, the local engine behind for everything but generation."""
    engine = RayEngine(local, handle if handle is not None else start(config), config)
    return cast(Engine, engine)
