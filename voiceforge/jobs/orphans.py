"""A Celery worker's sweep for jobs whose worker died: sent again within a lease, not a visibility timeout."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from voiceforge.db import db
from voiceforge.errors import ServiceUnavailable
from voiceforge.jobs import store

log = logging.getLogger(__name__)


class OrphanSweeper(threading.Thread):
    """Every `interval` seconds, queue again each running job whose runner's lease ran out and `send` it.

    A worker killed mid-job (kill -9, out of memory, a lost machine) leaves its task unacknowledged, and
    Redis delivers it again only after VOICEFORGE_CELERY_VISIBILITY_TIMEOUT, hours by default. Every live
    worker sweeps; the store lets one of them queue each job, so each is sent once. (The database
    backend's runners need none of this: they claim such jobs themselves.)
    """

    def __init__(self, app: Flask, interval: float, send: Callable[[str], None]) -> None:
        super().__init__(name="voiceforge-orphan-sweeper", daemon=True)
        self.app, self.interval, self.send = app, interval, send
        self.stopping = threading.Event()
        self._failing = False  # a database or broker outage is logged once, not every period

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sweep()

    def sweep(self) -> list[str]:
        """One pass: the ids of the jobs queued and sent again."""
        with self.app.app_context():
            try:
                sent = []
                for job_id in store.requeue_orphans():
                    log.warning("job %s: its runner stopped renewing its lease (it died); sent again to "
                                "resume from its checkpoint", job_id)
                    self.send(job_id)
                    sent.append(job_id)
            except (SQLAlchemyError, ServiceUnavailable) as error:
                db.session.rollback()
                if not self._failing:
                    log.warning("the sweep for jobs whose runner died failed (%s); trying again every %.0f s",
                                error, self.interval)
                self._failing = True
                return []
        self._failing = False
        return sent

    def stop(self) -> None:
        self.stopping.set()
