"""Hypothesis on the spec parser: any JSON body gives 201, 409 or 422, never a 500,
and a refused spec leaves nothing behind."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.spec.space import PRUNERS, SAMPLERS

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), st.text())
# Conditions on other parameters of the space: values, int ranges, or anything.
conditions = st.dictionaries(
    st.sampled_from(["x", "y", "lr", "z", "kind", "q"]),
    st.lists(scalars, max_size=3)
    | st.fixed_dictionaries({}, optional={"min": st.integers(-6, 6), "max": st.integers(-6, 6)})
    | json_values,
    max_size=2,
)
params = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("float"), "low": json_values | st.floats(-5, 5), "high": st.floats(-5, 5)},
        optional={"log": st.booleans(), "step": st.floats(0, 3) | json_values, "when": conditions},
    ),
    st.fixed_dictionaries(
        {"type": st.just("int"), "low": st.integers(-5, 5), "high": st.integers(-5, 5)},
        optional={"log": st.booleans(), "step": st.integers(-1, 3), "when": conditions},
    ),
    st.fixed_dictionaries(
        {"type": st.just("categorical"), "choices": st.lists(json_values, max_size=4)},
        optional={"when": conditions},
    ),
    json_values,
)
named_args = st.fixed_dictionaries(
    {"name": st.sampled_from([*sorted(SAMPLERS), *sorted(PRUNERS), "Nope"]) | st.text()},
    optional={
        "args": st.dictionaries(
            st.sampled_from(["seed", "n_startup_trials", "x"]), json_values, max_size=2
        )
    },
)
specs = st.fixed_dictionaries(
    {"name": names, "task": st.sampled_from(["synthetic", "digits"]) | st.text(max_size=8)},
    optional={
        "objectives": st.lists(
            st.fixed_dictionaries(
                {
                    "metric": st.sampled_from(["loss", "score", "accuracy", "nope"]),
                    "direction": st.sampled_from(["minimize", "maximize", "up"]),
                }
            ),
            max_size=3,
        ),
        "search_space": st.dictionaries(
            st.sampled_from(["x", "y", "lr", "z", "kind"]), params, max_size=4
        ),
        "sampler": named_args,
        "pruner": named_args | st.none(),
        "n_trials": st.integers(-2, 2_000_000) | json_values,
        "timeout_s": st.floats(-1, 10) | st.none(),
        "task_args": st.dictionaries(
            st.sampled_from(["epochs", "sleep_s", "bogus"]), json_values, max_size=2
        ),
        "enqueue_trials": st.lists(
            st.dictionaries(st.sampled_from(["x", "y", "z", "kind", "q"]), json_values, max_size=3),
            max_size=2,
        ),
        "warm_start": st.fixed_dictionaries(
            {"from_study": st.sampled_from(["nowhere", "warm"]) | json_values},
            optional={
                "trials": st.sampled_from(["complete", "all_finished", "some"]),
                "limit": st.integers(-1, 5) | json_values,
            },
        )
        | json_values,
        "constraints": st.lists(
            st.fixed_dictionaries(
                {"metric": st.sampled_from(["loss", "cost", "nope"]) | json_values},
                optional={"max": st.floats(-5, 5) | json_values, "min": st.floats(-5, 5)},
            )
            | json_values,
            max_size=2,
        ),
        "workers": st.dictionaries(
            st.sampled_from(["count", "gpus_per_worker", "launcher", "image"]),
            json_values,
            max_size=3,
        ),
    },
)


def _check(client: TestClient, body: Any) -> None:
    """201 with one more study, or a 409/422 in the error shape with nothing written."""
    before = client.get("/studies?limit=1").json()["total"]
    response = client.post("/studies", json=body)
    assert response.status_code in (201, 409, 422), (response.status_code, response.text)
    after = client.get("/studies?limit=1").json()["total"]
    if response.status_code == 201:
        assert after == before + 1
        assert client.get(f"/studies/{response.json()['name']}").status_code == 200
        return
    assert after == before
    error = response.json()
    assert error["code"]
    assert error["detail"]
    if response.status_code == 422:
        assert error["errors"]
        assert all(e["field"] and e["message"] for e in error["errors"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=specs)
def test_near_valid_specs_give_a_study_or_a_clear_422(client: TestClient, body: Any) -> None:
    _check(client, body)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values)
def test_any_json_body_is_refused_cleanly(client: TestClient, body: Any) -> None:
    _check(client, body)
