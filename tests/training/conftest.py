from __future__ import annotations

import pytest

from tests.training import cases


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> str:
    return cases.make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base_overrides(synthetic_data, tmp_path) -> list[str]:
    return [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp_path / 'cache'}"]
