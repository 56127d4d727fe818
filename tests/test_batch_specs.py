"""BatchOptions and what Batch refuses of a spec: at parse time, or (what depends on the
``[flow_task] batch_*`` defaults) when the try starts, always as a SpecError naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from provider import BatchOptions, Environment, Resources, SpecError, TaskSpec
from provider.specs import secret_variables
from provider.translate.batch import check_batch

ROLE = "arn:aws:iam::123456789012:role/flow-job"
SM = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-creds-AbCdEf"
STORE = "s3://flow-artifacts/prod"
SSM = "arn:aws:ssm:us-east-1:123456789012:parameter/flow/token"
FARGATE = BatchOptions(platform="FARGATE", execution_role_arn=ROLE)

# (label, builder, field, bad value as repr'd in the message): refused at parse time
BAD: list[tuple[str, Any, str, Any]] = [
    ("queue with a space", lambda: BatchOptions(queue="flow spot"), "batch.queue", "flow spot"),
    ("queue too long", lambda: BatchOptions(queue="q" * 129), "batch.queue", "q" * 129),
    ("queue starting with -", lambda: BatchOptions(queue="-q"), "batch.queue", "-q"),
    (
        "queue ARN of another service",
        lambda: BatchOptions(queue="arn:aws:sqs:us-east-1:123456789012:q"),
        "batch.queue",
        "arn:aws:sqs:us-east-1:123456789012:q",
    ),
    ("queue not a string", lambda: BatchOptions(queue=7), "batch.queue", 7),  # type: ignore[arg-type]
    (
        "job role not an ARN",
        lambda: BatchOptions(job_role_arn="flow-job"),
        "batch.job_role_arn",
        "flow-job",
    ),
    (
        "execution role of a user",
        lambda: BatchOptions(execution_role_arn="arn:aws:iam::123456789012:user/bob"),
        "batch.execution_role_arn",
        "arn:aws:iam::123456789012:user/bob",
    ),
    ("platform lowercase", lambda: BatchOptions(platform="fargate"), "batch.platform", "fargate"),
    ("platform EKS", lambda: BatchOptions(platform="EKS"), "batch.platform", "EKS"),
    (
        "share identifier with a dash",
        lambda: BatchOptions(share_identifier="team-a"),
        "batch.share_identifier",
        "team-a",
    ),
    (
        "share identifier too long",
        lambda: BatchOptions(share_identifier="a" * 256),
        "batch.share_identifier",
        "a" * 256,
    ),
    (
        "priority above 9999",
        lambda: BatchOptions(scheduling_priority=10000),
        "batch.scheduling_priority",
        10000,
    ),
    (
        "priority negative",
        lambda: BatchOptions(scheduling_priority=-1),
        "batch.scheduling_priority",
        -1,
    ),
    (
        "priority bool",
        lambda: BatchOptions(scheduling_priority=True),
        "batch.scheduling_priority",
        True,
    ),
    ("more than 10 attempts", lambda: BatchOptions(attempts=11), "batch.attempts", 11),
    ("zero attempts", lambda: BatchOptions(attempts=0), "batch.attempts", 0),
    ("attempts as text", lambda: BatchOptions(attempts="3"), "batch.attempts", "3"),  # type: ignore[arg-type]
    ("tags not a dict", lambda: BatchOptions(tags=["team"]), "batch.tags", ["team"]),
    (
        "tag key aws:",
        lambda: BatchOptions(tags={"aws:team": "ml"}),
        "batch.tags['aws:team']",
        "aws:team",
    ),
    (
        "tag key too long",
        lambda: BatchOptions(tags={"k" * 129: "v"}),
        f"batch.tags[{'k' * 129!r}]",
        "k" * 129,
    ),
    ("tag key empty", lambda: BatchOptions(tags={"": "v"}), "batch.tags['']", ""),
    (
        "tag key with #",
        lambda: BatchOptions(tags={"cost#center": "v"}),
        "batch.tags['cost#center']",
        "cost#center",
    ),
    (
        "tag value too long",
        lambda: BatchOptions(tags={"k": "v" * 257}),
        "batch.tags['k']",
        "v" * 257,
    ),
    ("tag value not text", lambda: BatchOptions(tags={"k": 1}), "batch.tags['k']", 1),
    (
        "tag value with a newline",
        lambda: BatchOptions(tags={"k": "a\nb"}),
        "batch.tags['k']",
        "a\nb",
    ),
    (
        "51 tags",
        lambda: BatchOptions(tags={f"k{i}": "v" for i in range(51)}),
        "batch.tags",
        {f"k{i}": "v" for i in range(51)},
    ),
    ("options of the wrong type", lambda: TaskSpec.build(batch="spot"), "batch", "spot"),
    ("an unknown option", lambda: TaskSpec.build(batch={"queues": "q"}), "batch.queues", "q"),
    # specs Batch refuses with compute="batch", or with BatchOptions(platform="FARGATE")
    (
        "a Kubernetes Secret name",
        lambda: TaskSpec.build(compute="batch", environment=Environment(secrets=["db-creds"])),
        "environment.secrets",
        "db-creds",
    ),
    (
        "a Secrets Manager ARN without its suffix",
        lambda: TaskSpec.build(
            compute="batch",
            environment=Environment(
                secrets=["arn:aws:secretsmanager:us-east-1:123456789012:secret:db"]
            ),
        ),
        "environment.secrets",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:db",
    ),
    (
        "two secrets for one variable",
        lambda: TaskSpec.build(
            compute="batch",
            environment=Environment(secrets=[SM, SM.replace("prod/", "dev/").replace("Ab", "Xy")]),
        ),
        "environment.secrets",
        SM.replace("prod/", "dev/").replace("Ab", "Xy"),
    ),
    (
        "a secret Batch's own variables would shadow",
        lambda: TaskSpec.build(
            compute="batch",
            environment=Environment(
                secrets=["arn:aws:ssm:us-east-1:123456789012:parameter/aws_batch_job_id"]
            ),
        ),
        "environment.secrets",
        "arn:aws:ssm:us-east-1:123456789012:parameter/aws_batch_job_id",
    ),
    (
        "an AWS_BATCH variable",
        lambda: TaskSpec.build(compute="batch", environment=Environment(env={"AWS_BATCH_X": "1"})),
        "environment.env['AWS_BATCH_X']",
        "AWS_BATCH_X",
    ),
    (
        "Fargate with a GPU",
        lambda: TaskSpec.build(batch=FARGATE, resources=Resources(cpu=4, memory="16Gi", gpu=1)),
        "resources.gpu",
        1,
    ),
    (
        "Fargate with 3 vCPUs",
        lambda: TaskSpec.build(batch=FARGATE, resources=Resources(cpu=3, memory="8Gi")),
        "resources.cpu",
        3.0,
    ),
    (
        "Fargate with 1 vCPU and 1 GiB",
        lambda: TaskSpec.build(batch=FARGATE, resources=Resources(cpu=1, memory="1Gi")),
        "resources.memory",
        1024,
    ),
    (
        "Fargate with 16 vCPUs and 36 GiB",
        lambda: TaskSpec.build(batch=FARGATE, resources=Resources(cpu=16, memory="36Gi")),
        "resources.memory",
        36864,
    ),
    (
        "Fargate with a disk",
        lambda: TaskSpec.build(batch=FARGATE, resources=Resources(memory="4Gi", disk="50Gi")),
        "resources.disk",
        51200,
    ),
    (
        "Fargate with shared memory",
        lambda: TaskSpec.build(
            batch=FARGATE, resources=Resources(memory="4Gi", shared_memory="1Gi")
        ),
        "resources.shared_memory",
        1024,
    ),
]

# Refused when the try starts, with the configured defaults laid under the task's options.
QUEUED = BatchOptions(queue="flow-spot")
AT_RUN_TIME: list[tuple[str, TaskSpec, BatchOptions, str]] = [
    ("no queue anywhere", TaskSpec(), BatchOptions(), "batch.queue"),
    (
        "a Kubernetes Secret sent to Batch by flow_compute",
        TaskSpec.build(compute="kubernetes", environment=Environment(secrets=["db-creds"])),
        QUEUED,
        "environment.secrets",
    ),
    (
        "secrets without an execution role",
        TaskSpec.build(environment=Environment(secrets=[SSM])),
        QUEUED,
        "batch.execution_role_arn",
    ),
    (
        "Fargate without an execution role",
        TaskSpec(),
        BatchOptions(queue="flow-spot", platform="FARGATE"),
        "batch.execution_role_arn",
    ),
    (
        "Fargate from the defaults with a GPU",
        TaskSpec.build(resources=Resources(gpu=1)),
        BatchOptions(queue="flow-spot", platform="FARGATE", execution_role_arn=ROLE),
        "resources.gpu",
    ),
    (
        "a Kubernetes task's fractional CPUs on Fargate",
        TaskSpec.build(compute="kubernetes", resources=Resources(cpu="750m", memory="2Gi")),
        BatchOptions(queue="flow-spot", platform="FARGATE", execution_role_arn=ROLE),
        "resources.cpu",
    ),
]


def test_the_bad_tables_are_large():
    assert len(BAD) >= 35 and len(AT_RUN_TIME) >= 6


@pytest.mark.parametrize(
    ("builder", "field", "value"), [row[1:] for row in BAD], ids=[row[0] for row in BAD]
)
def test_bad_batch_input_raises_spec_error_naming_field_value_and_form(builder, field, value):
    with pytest.raises(SpecError) as caught:
        builder()
    err = caught.value
    assert err.field == field
    message = str(err)
    assert message.startswith(f"{field}=") and repr(value) in message
    assert "Accepted:" in message and err.accepted


@pytest.mark.parametrize(
    ("spec", "options", "field"),
    [row[1:] for row in AT_RUN_TIME],
    ids=[row[0] for row in AT_RUN_TIME],
)
def test_what_depends_on_the_defaults_is_refused_when_the_try_starts(spec, options, field):
    with pytest.raises(SpecError) as caught:
        check_batch(spec, spec.batch.over(options), STORE)
    assert caught.value.field == field and "Accepted:" in str(caught.value)


def test_good_batch_specs_pass_both_checks():
    spec = TaskSpec.build(
        compute="batch",
        resources=Resources(cpu=0.5, memory="4Gi"),
        environment=Environment(env={"MODE": "x"}, secrets=[SM, f"{SM}:password::", SSM]),
        batch=BatchOptions(
            queue="arn:aws:batch:us-east-1:123456789012:job-queue/flow-spot",
            job_role_arn="arn:aws:iam::123456789012:role/service/flow-job",
            execution_role_arn=ROLE,
            platform="FARGATE",
            share_identifier="teamA*",
            scheduling_priority=9999,
            attempts=10,
            tags={"cost center": "ml/β", "owner": "a@b.c", "empty": ""},
        ),
    )
    check_batch(spec, spec.batch, STORE)
    for cpu, memory in ((0.25, 512), (4, 30720), (16, 122880), (32, 249856)):
        TaskSpec.build(batch=FARGATE, resources=Resources(cpu=cpu, memory=memory))


def test_a_store_no_batch_container_can_read_is_refused_naming_the_setting():
    """Job definitions mount no volume: a file:// store can never work on Batch."""
    spec = TaskSpec.build(compute="batch", batch=BatchOptions(queue="flow-spot"))
    with pytest.raises(SpecError) as caught:
        check_batch(spec, spec.batch, "file:///home/alice/airflow/flow_artifacts")
    message = str(caught.value)
    assert caught.value.field == "[flow_task] artifact_store" and "\n" not in message
    assert message.startswith(
        "[flow_task] artifact_store='file:///home/alice/airflow/flow_artifacts' is invalid: "
        "it must be an s3:// store for Batch"
    )


def test_task_options_win_over_the_defaults_and_tags_merge():
    defaults = BatchOptions(
        queue="default-q", job_role_arn=ROLE, platform="EC2", tags={"team": "ml", "env": "prod"}
    )
    mine = BatchOptions(queue="gpu-q", attempts=5, tags={"env": "dev"})
    merged = mine.over(defaults)
    assert (merged.queue, merged.job_role_arn, merged.platform, merged.attempts) == (
        "gpu-q",
        ROLE,
        "EC2",
        5,
    )
    assert dict(merged.tags) == {"team": "ml", "env": "dev"}
    assert BatchOptions().over(defaults) == defaults


def test_secrets_become_the_variables_their_names_give():
    assert secret_variables(
        [SM, f"{SM.replace('db-creds', 'api')}:token_v2::", SSM, SSM.replace("token", "2fa-seed")]
    ) == {
        "DB_CREDS": SM,
        "TOKEN_V2": f"{SM.replace('db-creds', 'api')}:token_v2::",
        "TOKEN": SSM,
        "_2FA_SEED": SSM.replace("token", "2fa-seed"),
    }


def test_options_through_the_decorator_and_override():
    from airflow.sdk import DAG

    from provider import flow_task

    with DAG("batch_options", schedule=None):

        @flow_task(compute="batch", batch=BatchOptions(queue="cpu-q", tags={"team": "ml"}))
        def fit() -> None: ...

        plain = fit().operator
        overridden = fit.override(task_id="fit_gpu", batch={"queue": "gpu-q"})().operator
        with pytest.raises(SpecError, match=r"batch.attempts=11 is invalid"):
            fit.override(batch={"attempts": 11})()
    assert plain.flow_spec.batch == BatchOptions(queue="cpu-q", tags={"team": "ml"})
    assert overridden.flow_spec.batch == BatchOptions(queue="gpu-q")
