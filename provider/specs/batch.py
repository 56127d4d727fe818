"""``BatchOptions``: where and how a flow task runs as an AWS Batch job; what Batch refuses."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from provider.specs.errors import SpecError
from provider.specs.platforms import target_platform
from provider.specs.resources import Resources
from provider.specs.settings_meta import setting

PLATFORMS = ("EC2", "FARGATE")
MAX_ATTEMPTS = 10  # Batch's retryStrategy.attempts: 1 to 10
DEFAULT_ATTEMPTS = 3
MAX_TAGS = 50
MAX_TAG_KEY, MAX_TAG_VALUE = 128, 256
MAX_PRIORITY = 9999

QUEUE_FORM = (
    "a job queue name such as 'flow-spot' (letters, digits, '-', '_', at most 128) or its ARN "
    "'arn:aws:batch:us-east-1:123456789012:job-queue/flow-spot'"
)
ROLE_FORM = "an IAM role ARN such as 'arn:aws:iam::123456789012:role/flow-job'"
SHARE_FORM = "up to 255 letters and digits, optionally ending in '*', such as 'teamA'"
TAGS_FORM = (
    "a dict of tag keys (1-128 characters, not starting with 'aws:') to values (at most 256); "
    "letters, digits, spaces and + - = . _ : / @"
)
FARGATE_FORM = "a vCPU / memory pair Fargate offers, such as Resources(cpu=1, memory='2Gi')"

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_QUEUE_ARN = re.compile(r"arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-queue/[A-Za-z0-9_-]{1,128}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}")
_SHARE = re.compile(r"[A-Za-z0-9]{1,255}\*?")
_TAG_TEXT = re.compile(r"[\w +=.:/@-]*")  # AWS's tag characters: \p{L}\p{Z}\p{N}_.:/=+-@

# vCPUs -> the memory sizes (MiB) Fargate offers with them (Batch's ResourceRequirement docs).
FARGATE_MEMORY: dict[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4097, 1024)),
    1: tuple(range(2048, 8193, 1024)),
    2: tuple(range(4096, 16385, 1024)),
    4: tuple(range(8192, 30721, 1024)),
    8: tuple(range(16384, 61441, 4096)),
    16: tuple(range(32768, 122881, 8192)),
    32: (61440, 122880, 249856),
}


_SECRETS_MANAGER = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:(?P<name>[\w/+=.@-]+)-[A-Za-z0-9]{6}"
    r"(?::(?P<key>[^:]*):[^:]*:[^:]*)?"
)
_SSM = re.compile(r"arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/(?P<name>[\w/.-]+)")
SECRET_ARN_FORM = (
    "full ARNs such as 'arn:aws:secretsmanager:us-east-1:123456789012:secret:db-creds-AbCdEf' "
    "(optionally ':json-key::' after it) or 'arn:aws:ssm:us-east-1:123456789012:parameter/db/token'"
)
RESERVED_ENV_PREFIX = "AWS_BATCH"


def secret_variables(secrets: Sequence[str]) -> dict[str, str]:
    """The environment variable each Batch secret becomes: ``{name: ARN}``.

    A Secrets Manager secret is named by its JSON key when the ARN selects one, else by its
    name (the last path part, without the 6-character suffix AWS adds); an SSM parameter by the
    last part of its path; upper-cased, other characters as ``_``:
    ``.../secret:prod/db-creds-AbCdEf`` becomes ``DB_CREDS``.
    """
    names: dict[str, str] = {}
    for arn in secrets:
        match = _SECRETS_MANAGER.fullmatch(arn) or _SSM.fullmatch(arn)
        if match is None:
            reason = (
                "a Kubernetes Secret name is resolved by compute='kubernetes' only"
                if not arn.startswith("arn:")
                else "not the full ARN of a Secrets Manager secret or an SSM parameter"
            )
            raise SpecError(
                "environment.secrets", arn, f"with compute='batch', {SECRET_ARN_FORM}", reason
            )
        base = match.groupdict().get("key") or match["name"].rstrip("/").rpartition("/")[2]
        name = re.sub(r"[^A-Z0-9_]", "_", base.upper())
        name = f"_{name}" if name[:1].isdigit() else name
        if name.startswith(RESERVED_ENV_PREFIX):
            clash = f"its variable {name} starts with {RESERVED_ENV_PREFIX}, which Batch reserves"
        elif name in names:
            clash = f"its variable {name} is already {names[name]}'s"
        else:
            names[name] = arn
            continue
        raise SpecError(
            "environment.secrets",
            arn,
            f"{SECRET_ARN_FORM}; each becomes the environment variable its name gives",
            clash,
        )
    return names


def _text(value: Any, field: str, pattern: re.Pattern[str], form: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SpecError(field, value, form)
    return value


def _whole(value: Any, field: str, low: int, high: int, form: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SpecError(field, value, form)
    return value


def check_tag(key: Any, value: Any, field: str) -> None:
    """A tag AWS accepts: key 1-128 characters, value at most 256, from AWS's character set."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_TAG_KEY or not _TAG_TEXT.fullmatch(key):
        raise SpecError(f"{field}[{key!r}]", key, TAGS_FORM, "invalid tag key")
    if key.lower().startswith("aws:"):
        raise SpecError(f"{field}[{key!r}]", key, TAGS_FORM, "the 'aws:' prefix is AWS's own")
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE or not _TAG_TEXT.fullmatch(value):
        raise SpecError(f"{field}[{key!r}]", value, TAGS_FORM, "invalid tag value")


def _tags(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, tuple):  # the normalized form, as dataclasses.replace passes it
        value = dict(value)
    if not isinstance(value, Mapping):
        raise SpecError("batch.tags", value, TAGS_FORM, "not a dict")
    for key, item in value.items():
        check_tag(key, item, "batch.tags")
    if len(value) > MAX_TAGS:
        raise SpecError("batch.tags", dict(value), TAGS_FORM, f"more than {MAX_TAGS} tags")
    return tuple(sorted(value.items()))


@dataclass(frozen=True)
class BatchOptions:
    """Queue, roles, platform, fair-share scheduling and tags of a flow task's Batch job.

    Every field left unset falls back to the ``[flow_task] batch_*`` settings; tags merge with
    the task's keys winning. ``attempts`` is how often Batch runs the job when its host is lost
    (a Spot reclaim): the user's own failures are retried by Airflow (``Retry``), never by Batch.
    ``target_platform`` is the platform ``Environment(pip=...)`` is built for (``"aarch64"``
    for a Graviton queue); else ``[flow_task] target_platform``.
    """

    queue: str | None = field(
        default=None,
        metadata=setting(
            "AWS Batch job queue (name or ARN) of flow tasks whose BatchOptions set none. A "
            "Batch task with no queue anywhere fails at once.",
            "flow-spot",
            key="batch_job_queue",
        ),
    )
    job_role_arn: str | None = field(
        default=None,
        metadata=setting(
            "IAM role the job's container runs as (its AWS credentials, e.g. for an s3:// "
            "artifact store).",
            "arn:aws:iam::123456789012:role/flow-job",
            key="batch_job_role_arn",
        ),
    )
    execution_role_arn: str | None = field(
        default=None,
        metadata=setting(
            "IAM role Batch and ECS use to start the job: pull the image, write logs, read "
            "Environment(secrets=[...]). Needed on Fargate and for secrets.",
            "arn:aws:iam::123456789012:role/flow-execution",
            key="batch_execution_role_arn",
        ),
    )
    platform: str | None = field(
        default=None,
        metadata=setting("EC2 or FARGATE; empty means EC2.", "FARGATE", key="batch_platform"),
    )
    share_identifier: str | None = None
    scheduling_priority: int | None = None
    attempts: int | None = None
    tags: Any = ()
    target_platform: str | None = None  # what Environment(pip=...) is built for

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.target_platform is not None:
            platform = target_platform(self.target_platform, "batch.target_platform")
            set_(self, "target_platform", platform)
        queue = self.queue
        if queue is not None and not (
            isinstance(queue, str) and (_QUEUE_NAME.fullmatch(queue) or _QUEUE_ARN.fullmatch(queue))
        ):
            raise SpecError("batch.queue", queue, QUEUE_FORM)
        _text(self.job_role_arn, "batch.job_role_arn", _ROLE_ARN, ROLE_FORM)
        _text(self.execution_role_arn, "batch.execution_role_arn", _ROLE_ARN, ROLE_FORM)
        if self.platform is not None and self.platform not in PLATFORMS:
            raise SpecError("batch.platform", self.platform, f"one of {PLATFORMS}")
        _text(self.share_identifier, "batch.share_identifier", _SHARE, SHARE_FORM)
        _whole(
            self.scheduling_priority,
            "batch.scheduling_priority",
            0,
            MAX_PRIORITY,
            f"an int from 0 to {MAX_PRIORITY} (higher runs first within a share)",
        )
        _whole(
            self.attempts,
            "batch.attempts",
            1,
            MAX_ATTEMPTS,
            f"an int from 1 to {MAX_ATTEMPTS}: how often Batch runs a job whose host was lost",
        )
        set_(self, "tags", _tags(self.tags))

    def over(self, defaults: BatchOptions) -> BatchOptions:
        """These options on top of ``defaults``: set scalars win, tags merge."""
        merged: dict[str, Any] = {}
        for f in fields(self):
            mine, base = getattr(self, f.name), getattr(defaults, f.name)
            if f.name == "tags":
                merged[f.name] = {**dict(base), **dict(mine)}
            else:
                merged[f.name] = base if mine is None else mine
        return BatchOptions(**merged)

    @property
    def fargate(self) -> bool:
        return self.platform == "FARGATE"


def check_fargate(resources: Resources) -> None:
    """Fargate runs no GPUs, no per-job disk or /dev/shm, and only its own vCPU/memory pairs."""
    if resources.gpu:
        raise SpecError(
            "resources.gpu",
            resources.gpu,
            "gpu=0 with BatchOptions(platform='FARGATE'), or platform='EC2' for GPUs",
            "Fargate has no GPUs",
        )
    for name in ("disk", "shared_memory"):
        if getattr(resources, name) is not None:
            raise SpecError(
                f"resources.{name}",
                getattr(resources, name),
                f"{name}=None with BatchOptions(platform='FARGATE'), or platform='EC2'",
                f"Batch sets no per-job {name.replace('_', ' ')} on Fargate",
            )
    cpu, memory = float(resources.cpu), int(resources.memory)
    if cpu not in FARGATE_MEMORY:
        raise SpecError(
            "resources.cpu",
            resources.cpu,
            FARGATE_FORM,
            f"Fargate offers {', '.join(f'{c:g}' for c in FARGATE_MEMORY)} vCPUs",
        )
    offered = FARGATE_MEMORY[cpu]
    if memory not in offered:
        raise SpecError(
            "resources.memory",
            memory,
            FARGATE_FORM,
            f"with cpu={cpu:g} Fargate offers memory of {_sizes(offered)} MiB",
        )


def _sizes(sizes: Sequence[int]) -> str:
    if len(sizes) > 3 and len({b - a for a, b in itertools.pairwise(sizes)}) == 1:
        return f"{sizes[0]} to {sizes[-1]} in steps of {sizes[1] - sizes[0]}"
    return ", ".join(map(str, sizes))
