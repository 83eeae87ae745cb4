"""Workflows: the stages of a job run in order, each resumable (the pipeline, the experiment),
and the checks every mode runs before its first step."""
