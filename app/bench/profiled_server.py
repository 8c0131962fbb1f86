"""`ragserver serve` with a cProfile switch, run by `ragserver bench profile` (never by the server).

`python -m app.bench.profiled_server --port P --out DIR` builds the app and logging as `serve` does;
`POST /__profile/start` turns cProfile on for the event-loop thread, `POST /__profile/stop?name=N` turns
it off and writes `DIR/N.prof`.
"""

from __future__ import annotations

import argparse
import cProfile
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

PREFIX = "/__profile/"


class ProfileSwitch:
    """Answers `PREFIX` paths itself (the switch); everything else goes to `app`."""

    def __init__(self, app: ASGIApp, out: Path):
        self.app = app
        self.out = out
        self.profile: cProfile.Profile | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["path"] == PREFIX + "start":
            self.profile = cProfile.Profile()
            self.profile.enable()  # this thread: the event loop's
        elif self.profile is not None:
            self.profile.disable()
            name = scope["query_string"].decode().removeprefix("name=") or "profile"
            self.profile.dump_stats(self.out / f"{Path(name).name}.prof")
            self.profile = None
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    import uvicorn

    from app.factory import create_app
    from app.logging_setup import configure_logging
    from app.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = Settings()
    configure_logging(settings.server.log_level, settings.server.log_format)
    uvicorn.run(
        ProfileSwitch(create_app(settings), args.out),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=True,
        limit_concurrency=settings.server.limit_concurrency,
        timeout_graceful_shutdown=settings.server.shutdown_timeout_s,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
