"""The Celery names of the runs app's jobs: messages and chains on the broker name them, so they never
change (the step job keeps the name it was first published under). A leaf: anything may import it."""

from __future__ import annotations

# The step job (runs/jobs.py): one step of a run; a run is a chain of them.
STEP_JOB_NAME = "pipelines.run_step"
# The item job (runs/jobs.py): one item of a foreach step (runs/services/items.py sends them).
ITEM_JOB_NAME = "runs.run_item"
