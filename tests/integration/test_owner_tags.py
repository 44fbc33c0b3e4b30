"""The owner tag (flows/prefect_server.py): a command's flow runs carry ``popseg.owner:<token>``
so the keeper can mark them Crashed when the command is killed; their task runs do not (Prefect
takes a concurrency slot on the API for every tag of a task run, an API round trip per step),
and a subflow started in a flow body carries it again."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext

from flows.prefect_keeper import OWNER_TAG_PREFIX
from flows.prefect_server import (
    owner_flow_tags,
    owner_tag_on_flow_runs_only,
    subflow_owner_tags,
)
from flows.reaper import owner_token


@task(cache_policy=NO_CACHE, persist_result=False)
def _task_tags() -> set[str]:
    return set(TaskRunContext.get().task_run.tags)


def _flow_tags() -> set[str]:
    return set(FlowRunContext.get().flow_run.tags)


@flow
@owner_tag_on_flow_runs_only
def _child() -> dict[str, set[str]]:
    return {"child flow": _flow_tags(), "child task": _task_tags()}


@flow
@owner_tag_on_flow_runs_only
def _parent() -> dict[str, set[str]]:
    seen = {"parent flow": _flow_tags(), "parent task": _task_tags()}
    with subflow_owner_tags():
        seen.update(_child())
    seen["parent task after the subflow"] = _task_tags()
    return seen


def test_flow_runs_carry_the_owner_tag_and_task_runs_do_not(prefect_server):
    owner = OWNER_TAG_PREFIX + owner_token()
    with owner_flow_tags():
        seen = _parent()
    assert owner in seen["parent flow"]
    assert owner in seen["child flow"]
    for name in ("parent task", "child task", "parent task after the subflow"):
        assert not any(t.startswith(OWNER_TAG_PREFIX) for t in seen[name]), (name, seen[name])


def test_other_tags_still_reach_the_task_runs(prefect_server):
    from prefect import tags

    with tags("team:segments"), owner_flow_tags():
        seen = _parent()
    assert "team:segments" in seen["parent task"]
    assert "team:segments" in seen["child task"]


def test_a_flow_started_without_an_owner_has_no_owner_tag(prefect_server):
    seen = _parent()
    assert not any(t.startswith(OWNER_TAG_PREFIX) for t in seen["parent flow"] | seen["child flow"])


def test_the_wrapped_flow_functions_pickle_by_value():
    """Dask's task runner cloudpickles the flow function by value with the globals it names:
    the wrapper must name none that cannot be pickled (a ContextVar could not)."""
    import cloudpickle

    from flows.monitoring import monitor_flow
    from flows.training import training_flow

    for flow_object in (training_flow, monitor_flow):
        again = cloudpickle.loads(cloudpickle.dumps(flow_object.fn))
        assert again.__wrapped__.__name__ == flow_object.fn.__wrapped__.__name__
