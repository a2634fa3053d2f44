"""Routes for plant IT/OT: liveness, readiness, Prometheus metrics, tokens, and who-am-I."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qcstation.station.api.deps import Admin, ApiContext, Caller, Ctx, Reader
from qcstation.station.api.routes_operator import latency
from qcstation.station.api.schemas import ErrorOut, HealthOut, TokenOut, WhoAmIOut
from qcstation.station.errors import StoreError
from qcstation.station.outbox import outbox_backlog
from qcstation.station.types import BatchStatus

router = APIRouter(tags=["admin"])


@router.get("/health", response_model=HealthOut, summary="Liveness")
def health() -> HealthOut:
    """The process answers (no token needed)."""
    return HealthOut(status="ok")


@router.get(
    "/ready",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "not ready"}},
    summary="Readiness",
)
def ready(ctx: Ctx) -> Response:
    """Ready when the store answers and the station runs (no token needed)."""
    checks: dict[str, str] = {}
    try:
        ctx.store.count_outbox_pending()
        checks["store"] = "ok"
    except StoreError as e:
        checks["store"] = f"unreachable: {e}"
    c = ctx.control
    if c is None:
        checks["station"] = "none in this process"
    elif c.running:
        checks["station"] = "running"
    else:
        err = c.state.error
        checks["station"] = "stopped" + (f": {err}" if err is not None else "")
    ok = checks["store"] == "ok" and checks["station"] == "running"
    body = HealthOut(status="ok" if ok else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
def metrics(ctx: Ctx, _who: Reader) -> Response:
    """Counters by verdict and disposition, recent latency quantiles, outbox backlog, hold state."""
    registry: CollectorRegistry = ctx.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get(
    "/tokens",
    response_model=list[TokenOut],
    responses={403: {"model": ErrorOut}},
    summary="API tokens (admin)",
)
def list_tokens(ctx: Ctx, _who: Admin) -> list[TokenOut]:
    """Every token of this station without its secret (issue and revoke with ``qcstation token``)."""
    return [
        TokenOut(
            name=t.name,
            role=t.role.value,
            created_at=t.created_at,
            created_by=t.created_by,
            revoked_at=t.revoked_at,
        )
        for t in ctx.tokens.list()
    ]


@router.get("/whoami", response_model=WhoAmIOut, summary="Who this request is")
def whoami(who: Caller) -> WhoAmIOut:
    """The token's name and role (``anonymous`` viewer when tokens are not required)."""
    return WhoAmIOut(name=who.name, role=who.role.value, anonymous=who.anonymous)


class StationCollector(Collector):
    """Reads the station's live counters at scrape time (nothing to keep in step)."""

    def __init__(self, ctx: ApiContext) -> None:
        """Collect for the app's context."""
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        """One sample set per scrape."""
        ctx = self.ctx
        c = ctx.control
        up = GaugeMetricFamily("qcstation_station_running", "1 while the station takes frames")
        up.add_metric([], 1.0 if c is not None and c.running else 0.0)
        yield up
        backlog = GaugeMetricFamily("qcstation_outbox_backlog", "outbox items waiting for delivery")
        try:
            backlog.add_metric([], float(ctx.store.count_outbox_pending()))
        except StoreError:
            backlog.add_metric([], float("nan"))
        yield backlog
        age = GaugeMetricFamily(
            "qcstation_outbox_backlog_age_seconds", "age of the oldest outbox item waiting for delivery"
        )
        try:
            age.add_metric([], outbox_backlog(ctx.store).age_seconds)
        except StoreError:
            age.add_metric([], float("nan"))
        yield age
        if c is None:
            return
        st = c.station
        s = st.stats
        verdicts = CounterMetricFamily(
            "qcstation_inspections", "parts committed since start, by verdict", labels=["verdict"]
        )
        for v in ("PASS", "REVIEW", "FAIL", "ERROR"):
            verdicts.add_metric([v], float(s.verdicts.get(v, 0)))
        yield verdicts
        disp = CounterMetricFamily(
            "qcstation_dispositions", "parts committed since start, by disposition", labels=["disposition"]
        )
        for d in ("ACCEPT", "REJECT", "HOLD"):
            disp.add_metric([d], float(s.dispositions.get(d, 0)))
        yield disp
        lat = latency(list(s.latencies_ms))
        q = GaugeMetricFamily(
            "qcstation_latency_ms",
            "capture-to-commit latency over the recent window (last 2048 parts)",
            labels=["quantile"],
        )
        for label, value in (("0.5", lat.p50), ("0.95", lat.p95), ("0.99", lat.p99)):
            q.add_metric([label], float("nan") if value is None else value)
        yield q
        stages = GaugeMetricFamily(
            "qcstation_stage_ms",
            "time a part spent working in each station stage over the recent window (last 2048 parts); "
            "capture-to-commit latency minus their sum is time spent waiting",
            labels=["stage", "quantile"],
        )
        for stage, window in list(s.stages_ms.items()):
            sl = latency(list(window))
            for label, value in (("0.5", sl.p50), ("0.99", sl.p99)):
                stages.add_metric([stage, label], float("nan") if value is None else value)
        yield stages
        rate = GaugeMetricFamily("qcstation_rate_per_second", "committed parts per second since start")
        rate.add_metric([], s.rate)
        yield rate
        hold = GaugeMetricFamily(
            "qcstation_batch_on_hold", "1 while the current batch is on hold", labels=["batch"]
        )
        hold.add_metric([st.batch_id], 1.0 if c.batch_status is BatchStatus.HOLD else 0.0)
        yield hold
        faults = GaugeMetricFamily("qcstation_fault", "1 while a station fault lasts", labels=["kind"])
        faults.add_metric(["source"], 1.0 if s.source_fault else 0.0)
        faults.add_metric(["store"], 1.0 if s.store_fault else 0.0)
        yield faults
