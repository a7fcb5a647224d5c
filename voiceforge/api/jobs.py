"""/api/jobs: fine-tuning jobs, their progress, and cancelling them."""

from __future__ import annotations

from voiceforge.api import ApiBlueprint
from voiceforge.jobs import store
from voiceforge.models import Job, JobState
from voiceforge.runtime import get_runtime
from voiceforge.schemas import ErrorSchema, JobListSchema, JobQuerySchema, JobSchema
from voiceforge.services import finetuning

blp = ApiBlueprint("jobs", __name__, url_prefix="/api/jobs", description="Background fine-tuning jobs.")


@blp.route("")
@blp.arguments(JobQuerySchema, location="query")
@blp.response(200, JobListSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(422, schema=ErrorSchema, description="Unknown state, or a limit outside 1-1000.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def list_jobs(query: dict) -> dict:
    """Jobs, newest first; filter by `voiceId` and `state`, and take the newest `limit` (1-1000)."""
    state = JobState(query["state"]) if query["state"] else None
    return {"jobs": store.list_jobs(query["voiceId"], state, query["limit"])}


@blp.route("/<string:job_id>")
@blp.response(200, JobSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown job.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def get_job(job_id: str) -> Job:
    """One job: state, progress, epoch, step, loss, message, error."""
    return store.get_job(job_id)


@blp.route("/<string:job_id>/cancel", methods=["POST"])
@blp.response(200, JobSchema)
@blp.alt_response(401, schema=ErrorSchema, description="No valid API key (when the server requires keys).")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown job.")
@blp.alt_response(503, schema=ErrorSchema, description="Database busy or unavailable (see Retry-After).")
def cancel_job(job_id: str) -> Job:
    """Cancel a job: a queued one at once, a running one within seconds (its files are removed)."""
    return finetuning.cancel_job(get_runtime(), store.get_job(job_id))
