"""The runtime: validated settings and the long-lived collaborators (engine, latent cache, catalogue).

The factory builds one per app and keeps it in `app.extensions["voiceforge"]`; views and CLI commands
get it with `get_runtime()`, and a worker process builds the same one through `create_app()` without
any HTTP request. Nothing here loads the model: the engine does that on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from voiceforge.settings import Settings

if TYPE_CHECKING:
    from voiceforge.services.catalogue import LatentCache, VoiceCatalogue
    from voiceforge.services.engine import Engine

EXTENSION = "voiceforge"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    latent_cache: LatentCache
    catalogue: VoiceCatalogue


def build_runtime(settings: Settings, engine: Engine | None = None) -> Runtime:
    """Wire the collaborators; `engine` lets a caller share an already built one (tests, tools)."""
    from voiceforge.services.catalogue import LatentCache, VoiceCatalogue
    from voiceforge.services.engine import Engine, EngineSettings

    engine = engine or Engine(EngineSettings.from_settings(settings))
    latent_cache = LatentCache(settings.latent_cache_size)
    return Runtime(settings, engine, latent_cache, VoiceCatalogue(settings, engine, latent_cache))


def register_runtime(app: Flask, settings: Settings, engine: Engine | None = None) -> Runtime:
    runtime = app.extensions[EXTENSION] = build_runtime(settings, engine)
    return runtime


def get_runtime(app: Flask | None = None) -> Runtime:
    """The runtime of `app`, or of the current app."""
    return (app or current_app).extensions[EXTENSION]


def warn_if_no_model(runtime: Runtime) -> bool:
    """At start-up: one warning line, with the fix, when no model can be provided. True if usable."""
    problem = runtime.engine.problem()
    if problem:
        log.warning("starting without a usable XTTS-v2 model; speech and cloning answer 503 until it is "
                    "fixed: %s", problem)
    return problem is None
