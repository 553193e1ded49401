"""One local Ray per test session, sized for a 2-core machine (see RAY_NOTES)."""
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.pop("RAY_ADDRESS", None)

import pytest  # noqa: E402
import ray  # noqa: E402


def pytest_collection_modifyitems(items):
    """Files marked `slow(seconds=...)` run first, the longest first (the sort is stable):
    `make test`'s two workers take a file at a time, in this order (xdist's reordering by test
    count is off), and a long file started last would run alone at the end."""
    def key(item):
        slow = item.get_closest_marker("slow")
        return -slow.kwargs["seconds"] if slow else 0
    items.sort(key=key)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (fewer deadlocks on 2 cores) and a small object store."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, object_store_memory=512 * 2**20, include_dashboard=False,
                 log_to_driver=False)
    from autoal.compute.runtime import quiet
    quiet()
    yield ray
    ray.shutdown()
