import os

from hypothesis import HealthCheck, settings

# dev (the default, `python -m pytest -q`) tries half the examples CI does, to keep the run
# short on a small machine; .ci/run sets HYPOTHESIS_PROFILE=ci
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "nightly", max_examples=1000, deadline=None, stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
