from tests.training.conftest import base_overrides, synthetic_data  # noqa: F401 - shared fixtures
