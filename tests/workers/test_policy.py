import pytest

from cascade.workers.items import Route
from cascade.workers.policy import route


@pytest.mark.parametrize(
    ("confidence", "threshold", "expected"),
    [
        (0.49, 0.5, Route.ESCALATE),
        (0.5, 0.5, Route.ACCEPT),
        (0.99, 0.5, Route.ACCEPT),
        (0.0, 0.0, Route.ACCEPT),
        (0.999, 1.0, Route.ESCALATE),
        (1.0, 1.0, Route.ESCALATE),
    ],
)
def test_route_compares_confidence_with_threshold(confidence: float, threshold: float, expected: Route) -> None:
    assert route(confidence, threshold) is expected


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_route_refuses_threshold_out_of_range(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        route(0.5, threshold)
