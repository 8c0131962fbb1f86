"""The one place a request's caller is decided.

`authenticate` resolves the principal from `Authorization: Bearer <key>` (401 without a valid key),
counts the request against the key's rate limit (429), and is the dependency every non-public route
must have: `Reader`, `Writer` and `Admin` are it plus a role check (403). Routes hand the principal to
the services, which scope every collection, document, job and conversation by it.

`check_routes_guarded(app)` runs when the app starts: a route that reaches neither `authenticate` nor
`authorize_metrics`, and is not in `PUBLIC_PATHS`, stops the server from starting, so a route cannot be
added without deciding who may call it (tests/security/test_isolation.py calls every route too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from app.api.deps import ContainerDep
from app.auth.principal import Principal, Role
from app.services.errors import Forbidden, ServiceError, Unauthenticated

# Open to anyone: liveness and readiness (load balancers), and the API's own description (its pages
# and their assets, app/api/docs.py).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/docs-assets",
        # The web UI's two static pages and their script and stylesheet: they hold no data, every call
        # they make carries the key.
        "/ui",
        "/ui/review",
        "/ui/assets/ui.js",
        "/ui/assets/ui.css",
    }
)


async def authenticate(request: Request, container: ContainerDep) -> Principal:
    """The caller of this request (Principal.anonymous() with auth mode `none`)."""
    try:
        principal = await container.authenticator.authenticate(request.headers.get("authorization"))
    except Unauthenticated:
        _count_refusal(request, "401")
        # Throttled per client address (429 past auth.max_failed_auth_per_minute); checked only once a
        # key has failed, so a valid key from the same address keeps working.
        client = request.client.host if request.client is not None else "unknown"
        await container.rate_limits.hit_auth_failure(client)
        raise
    except ServiceError:
        _count_refusal(request, "401")
        raise
    await container.rate_limits.hit_request(principal)
    request.state.principal = principal
    return principal


def _count_refusal(request: Request, status: str) -> None:
    container = getattr(request.app.state, "container", None)
    if container is not None:
        container.metrics.auth_failures.labels(status=status).inc()


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, when its role is at least `role` (else 403)."""

    async def dependency(
        principal: Annotated[Principal, Depends(authenticate)], request: Request
    ) -> Principal:
        if not principal.has_role(role):
            _count_refusal(request, "403")
            raise Forbidden(f"this key's role ({principal.role}) cannot do this: it needs {role}")
        return principal

    dependency.__name__ = f"requires_{role}"
    return dependency


Reader = Annotated[Principal, Depends(requires("reader"))]
Writer = Annotated[Principal, Depends(requires("writer"))]
Admin = Annotated[Principal, Depends(requires("admin"))]


async def authorize_metrics(request: Request, container: ContainerDep) -> None:
    """/metrics is the operator's: the metrics token (auth.metrics_token), or anyone with auth mode `none`.

    Its figures are server-wide and some are labelled by collection, so no API key opens it, an admin's
    included: a tenant's admin reads its own figures at `GET /v1/admin/metrics`."""
    if container.authenticator.is_metrics_token(request.headers.get("authorization")):
        return
    principal = await authenticate(request, container)  # no key or a bad one: 401 as everywhere
    if container.authenticator.enabled:
        _count_refusal(request, "403")
        raise Forbidden(
            f"/metrics needs the operator's metrics token (auth.metrics_token), not an API key; this key's "
            f"{principal.role} figures for its tenant are at GET /v1/admin/metrics"
        )


_GUARDS: frozenset[Callable[..., Any]] = frozenset({authenticate, authorize_metrics})


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


@dataclass(frozen=True)
class RouteInfo:
    """One endpoint as served: its full path, methods and dependency tree (None: not a FastAPI route)."""

    path: str
    methods: frozenset[str]
    dependant: Dependant | None

    @property
    def guarded(self) -> bool:
        """Whether the route resolves the caller (directly or through another dependency)."""
        return self.dependant is not None and any(call in _GUARDS for call in _calls(self.dependant))


def iter_routes(routes: Iterable[Any]) -> Iterator[RouteInfo]:
    """Every endpoint under `routes` (an app's or a router's), included routers flattened: FastAPI
    0.16x keeps an included router as one nested entry of `app.routes`, resolved per request."""
    for route in routes:
        if hasattr(route, "effective_candidates"):  # an included router
            yield from iter_routes(route.effective_candidates())
        elif isinstance(route, APIRoute) or hasattr(route, "original_route"):
            methods = frozenset(getattr(route, "methods", None) or ())
            yield RouteInfo(route.path, methods, getattr(route, "dependant", None))
        elif isinstance(route, Route):
            yield RouteInfo(route.path, frozenset(route.methods or ()), None)
        elif isinstance(route, BaseRoute):  # a Mount, a WebSocket route: nothing decides its caller
            yield RouteInfo(getattr(route, "path", repr(route)), frozenset(), None)


def unguarded_routes(app: FastAPI) -> list[str]:
    """`METHODS path` of every route that neither decides its caller nor is public."""
    return [
        f"{','.join(sorted(info.methods))} {info.path}"
        for info in iter_routes(app.routes)
        if info.path not in PUBLIC_PATHS and not info.guarded
    ]


def check_routes_guarded(app: FastAPI) -> None:
    """RuntimeError naming the routes without an auth dependency."""
    missing = unguarded_routes(app)
    if missing:
        raise RuntimeError(
            "routes without an auth dependency (add Reader/Writer/Admin from app.api.guards, or list the "
            f"path in PUBLIC_PATHS): {'; '.join(missing)}"
        )
