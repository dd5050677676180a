"""After-plan steps: one contract (base.py: plan in, plan and a part of the report out) and the steps every
scheme may list: the accuracy guard, the accuracy target's search, measured placement and the range refit,
with the trials and the timing rule they share."""
