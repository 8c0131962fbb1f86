"""Import ragas 0.4 so that it works offline and with a current langchain-community.

Two things stand between `import ragas` and a working eval here:

- ragas 0.4.3 imports `langchain_community.chat_models.vertexai.ChatVertexAI` at module level, and current
  langchain-community releases no longer ship that module, so `import ragas` fails outright (upstream
  vibrantlabsai/ragas#2745, #2995; still open). ragas only uses the class in an `isinstance` list, so a
  placeholder class lets everything else import unchanged.
- ragas posts usage analytics to its own host unless RAGAS_DO_NOT_TRACK is true; nothing may leave the
  machine during an eval, and a blocked request would only add timeouts.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

_VERTEX_MODULE = "langchain_community.chat_models.vertexai"


def prepare_ragas() -> None:
    """Make `import ragas` work offline; idempotent and cheap after the first call."""
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    if "ragas" in sys.modules or _VERTEX_MODULE in sys.modules:
        return
    try:
        importlib.import_module(_VERTEX_MODULE)
    except ImportError:
        stub = types.ModuleType(_VERTEX_MODULE)
        # A class nothing is ever an instance of: ragas's isinstance checks simply say no.
        stub.ChatVertexAI = type("ChatVertexAI", (), {})  # type: ignore[attr-defined]
        sys.modules[_VERTEX_MODULE] = stub
