"""The dashboard job an RQ worker runs: load the model and the SAE, build the dashboard, store it.

The worker loads the model itself (hub id, local directory or alias, as ``LanguageModel`` resolves it),
so a dashboard needs no inference server. Writes are atomic and the result depends only on the request,
so an attempt re-run after a lost worker simply builds it again.
"""

from __future__ import annotations

import time

from mi_crow.mechanistic.dashboards import DashboardCancelled, build_stored_dashboard
from mi_crow.services.artifacts.jobs import TERMINAL
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.convert import dataset_from_spec
from mi_crow.workers.telemetry import observed
from mi_crow.workers.training import _env_jobs, _env_store, _Heartbeat

PROGRESS_EVERY_S = 0.5  # Redis writes from the progress callback are throttled to this


@observed("dashboard", lambda job_id: _env_jobs().request_id(job_id))
def run_dashboard_job(job_id: str, attempt: int = 1) -> str:
    from mi_crow.language_model import LanguageModel  # heavy; only in the work horse that needs it

    jobs = _env_jobs()
    store = _env_store()
    if jobs.state(job_id) in TERMINAL:
        return jobs.state(job_id)
    if jobs.attempt(job_id) != attempt:
        return "SUPERSEDED"
    req = jobs.get(job_id).dashboard_request
    started = time.time()
    jobs.update(job_id, state="RUNNING", started_at=started, heartbeat_at=started, phase="dashboard")
    beat = _Heartbeat(jobs, job_id, attempt)
    beat.start()
    last = 0.0

    def on_progress(fraction: float, message: str) -> bool:
        nonlocal last
        if jobs.cancel_requested(job_id) or beat.superseded:
            return False
        now = time.time()
        if now - last >= PROGRESS_EVERY_S or fraction >= 1.0:
            last = now
            jobs.update(job_id, progress=round(min(0.99, fraction), 4), metrics={"progress": fraction})
            jobs.log(job_id, message)
        return True

    try:
        dataset = dataset_from_spec(req.dataset, ServerConfig.from_env().dataset_roots)
        jobs.log(job_id, f"loading model {req.model_id}")
        lm = LanguageModel(req.model_id, store=store)
        result = build_stored_dashboard(
            lm, req.sae_id, dataset, store=store,
            top_k=req.top_k or 10, max_latents=req.max_latents or 256, max_tokens=req.max_tokens or 1_000_000,
            batch_size=req.batch_size or 16, max_length=req.max_length or None, progress=False,
            on_progress=on_progress,
        )  # fmt: skip
    except DashboardCancelled:
        if beat.superseded:
            return "SUPERSEDED"
        jobs.log(job_id, "stopped: cancel requested")
        return "CANCELLED"
    except Exception as exc:
        jobs.update(job_id, state="FAILED", error=f"{type(exc).__name__}: {exc}", finished_at=time.time())
        jobs.log(job_id, f"failed: {type(exc).__name__}: {exc}")
        return "FAILED"
    finally:
        beat.stopped.set()
    board = result.dashboard
    if jobs.state(job_id) not in TERMINAL:
        jobs.update(
            job_id,
            state="SUCCEEDED",
            progress=1.0,
            step=board.n_tokens,
            total_steps=board.n_tokens,
            metrics={"latents": len(board.latents), "tokens": board.n_tokens, "texts": board.n_texts},
            dashboard_path=str(result.json_path.relative_to(store.root)),
            finished_at=time.time(),
        )
    jobs.log(job_id, f"dashboard of {len(board.latents)} latents over {board.n_tokens} tokens stored")
    return "SUCCEEDED"
