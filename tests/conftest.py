"""Settings shared by every test."""

from hypothesis import settings

# Tests assert behaviour, never wall time: a per-example deadline would fail a correct
# property on a slow or loaded machine.
settings.register_profile("computemesh", deadline=None)
settings.load_profile("computemesh")
