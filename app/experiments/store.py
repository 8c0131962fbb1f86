"""Experiments in the system of record (`experiments`): their spec, status, stopped arms and log."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.db.tables import experiments as experiments_t
from app.experiments.spec import ExperimentSpec


@dataclass
class Experiment:
    tenant: str
    spec: ExperimentSpec
    status: str = "draft"
    # Arms stopped by a guardrail (or by hand): their traffic goes to control.
    stopped_arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.spec.model_dump(mode="json", exclude_none=True),
            "status": self.status,
            "control": self.spec.control.name,
            "stopped_arms": self.stopped_arms,
            "log": self.log,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
        }


class ExperimentStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, experiment: Experiment, *, replace: bool = False) -> bool:
        """Store a new experiment; False when the tenant has one by that name (and not `replace`)."""
        now = time.time()
        experiment.created_at = experiment.created_at or now
        experiment.updated_at = now
        with self.engine.begin() as conn:
            if self._row(conn, experiment.tenant, experiment.name) is not None:
                if not replace:
                    return False
                conn.execute(sa.delete(experiments_t).where(self._key(experiment.tenant, experiment.name)))
            conn.execute(sa.insert(experiments_t).values(**self._values(experiment)))
        return True

    def get(self, tenant: str, name: str) -> Experiment | None:
        with self.engine.connect() as conn:
            row = self._row(conn, tenant, name)
        return _experiment(row) if row is not None else None

    def list(self, tenant: str | None = None, *, status: str | None = None) -> list[Experiment]:
        query = sa.select(experiments_t).order_by(experiments_t.c.created_at)
        if tenant is not None:
            query = query.where(experiments_t.c.tenant == tenant)
        if status is not None:
            query = query.where(experiments_t.c.status == status)
        with self.engine.connect() as conn:
            return [_experiment(r) for r in conn.execute(query)]

    def save(self, experiment: Experiment) -> None:
        """Write back an experiment read with `get` (status, stopped arms, log)."""
        experiment.updated_at = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(experiments_t)
                .where(self._key(experiment.tenant, experiment.name))
                .values(**self._values(experiment))
            )

    def delete(self, tenant: str, name: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(sa.delete(experiments_t).where(self._key(tenant, name))).rowcount)

    @staticmethod
    def _key(tenant: str, name: str) -> Any:
        return sa.and_(experiments_t.c.tenant == tenant, experiments_t.c.name == name)

    def _row(self, conn: Connection, tenant: str, name: str) -> Any:
        return conn.execute(sa.select(experiments_t).where(self._key(tenant, name))).first()

    @staticmethod
    def _values(e: Experiment) -> dict[str, Any]:
        return {
            "tenant": e.tenant,
            "name": e.name,
            "spec_json": e.spec.model_dump_json(exclude_none=True),
            "status": e.status,
            "stopped_arms_json": json.dumps(e.stopped_arms),
            "log_json": json.dumps(e.log),
            "created_at": e.created_at,
            "updated_at": e.updated_at,
            "started_at": e.started_at,
        }


def _experiment(r: Any) -> Experiment:
    return Experiment(
        tenant=r.tenant,
        spec=ExperimentSpec.model_validate_json(r.spec_json),
        status=r.status,
        stopped_arms=json.loads(r.stopped_arms_json),
        log=json.loads(r.log_json),
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
    )
