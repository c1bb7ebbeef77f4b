"""Stage 2, ``grad2vae train``: one run (model x dataset x normal class x seed) or several
seeds in lock-step, from data to ``metrics.json``. An epoch flows ``cohort`` (the loop) ->
``lifecycle`` (one run's state, checkpoints, resume) -> ``evaluate`` (scores, AUCs) -> ``outputs``
(the run's files). Imports torch."""
