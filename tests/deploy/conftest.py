import pytest

from tests.deploy.manifests import OVERLAYS, Rendered, render


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """Each overlay of deploy/overlays, rendered once per session."""
    return Rendered(request.param, render(request.param))
