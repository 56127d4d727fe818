"""The first thing a flow task's container runs: ``python3 -c <this file> ARGS``.

It needs nothing but Python: it checks the Python version, fetches the content-addressed code
package (the flowtask runtime, cloudpickle and the DAG folder's modules) and the task's
environments (the one built from ``Environment(pip=[...])``, and the runtime's own: boto3 and
zstandard for an ``s3://`` store), verifies each one's SHA-256, unpacks the environments into a
cache folder (kept across pods where it is a node path), puts them in front of ``sys.path``, and
hands over to ``provider.runtime``. No package index is reached, and nothing is installed: the
worker built the environments. It imports nothing from the package it lives in, so its source
can travel in the command line, and it reads S3 with the standard library alone (SigV4, and the
AWS credential chain: variables, web identity, container and instance credentials).

Any image's Python may run it, so it parses, and runs up to the version check, on Python 3.7 and
later (``tests/test_bootstrap_pythons.py`` checks this with vermin): the check comes first,
before the arguments are parsed, and names both versions.

Usage: ``--python X.Y --store URI --code KEY:SIZE [--env KEY:SIZE]... [--arch ARCH]
[--env-cache DIR] -- RUNTIME_ARGS...``, where KEY is a blob's key in the store, which ends in
its SHA-256.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO, NoReturn
from urllib.parse import unquote, urlparse

READ_CHUNK = 1 << 20
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def fail(message: str, code: int = 2) -> NoReturn:
    print("flowtask bootstrap: " + message, file=sys.stderr, flush=True)
    sys.exit(code)


def check_python(argv: list[str]) -> None:
    """Refuse to run under another Python than the worker's, naming both."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    if "--python" not in own or own.index("--python") + 1 >= len(own):
        return  # argparse names the missing flag
    wanted = own[own.index("--python") + 1]
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if wanted != running:
        fail(
            f"the task was packaged with Python {wanted} on the Airflow worker, but "
            f"this container runs Python {running}; use an image with Python {wanted}"
        )


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="flowtask bootstrap", allow_abbrev=False)
    parser.add_argument("--python", required=True, help="the worker's Python, X.Y")
    parser.add_argument("--store", required=True, help="the artifact store's URI")
    parser.add_argument("--code", required=True, help="the code package's KEY:SIZE")
    parser.add_argument("--env", action="append", default=[], help="an environment's KEY:SIZE")
    parser.add_argument("--arch", help="the machine the environments were built for")
    parser.add_argument("--env-cache", help="where environments are unpacked (default: temp)")
    return parser.parse_args(argv[:split]), argv[split + 1 :]


# --- S3 with the standard library ------------------------------------------------------------


def _get_json(url: str, headers: dict, timeout: float = 5.0, method: str = "GET") -> dict:
    request = urllib.request.Request(url, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


def _web_identity(region: str) -> dict:
    """IRSA: the projected token traded with STS (AssumeRoleWithWebIdentity, unsigned)."""
    with open(os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]) as token:
        form = {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": "2011-06-15",
            "RoleArn": os.environ["AWS_ROLE_ARN"],
            "RoleSessionName": os.environ.get("AWS_ROLE_SESSION_NAME", "flowtask-bootstrap"),
            "WebIdentityToken": token.read().strip(),
        }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_STS") or f"https://sts.{region}.amazonaws.com"
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(endpoint.rstrip("/") + "/", data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    request.add_header("Accept", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    import xml.etree.ElementTree as ET

    found = {}
    for element in ET.fromstring(text).iter():
        name = element.tag.rpartition("}")[2]
        if name in ("AccessKeyId", "SecretAccessKey", "SessionToken"):
            found[name] = element.text or ""
    return {
        "key": found["AccessKeyId"],
        "secret": found["SecretAccessKey"],
        "token": found.get("SessionToken"),
    }


def _container_credentials() -> dict:
    """ECS / Batch job roles and EKS Pod Identity: the container credentials endpoint."""
    relative = os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    if relative:
        url = "http://169.254.170.2" + relative
    else:
        url = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    headers = {}
    token = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    token_file = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if token_file:
        with open(token_file) as read:
            token = read.read().strip()
    if token:
        headers["Authorization"] = token
    found = _get_json(url, headers)
    return {
        "key": found["AccessKeyId"],
        "secret": found["SecretAccessKey"],
        "token": found.get("Token"),
    }


def _instance_credentials() -> dict:
    """An EC2 instance profile, through IMDSv2."""
    base = "http://169.254.169.254/latest"
    request = urllib.request.Request(base + "/api/token", method="PUT")
    request.add_header("X-aws-ec2-metadata-token-ttl-seconds", "300")
    with urllib.request.urlopen(request, timeout=2) as response:
        token = response.read().decode()
    headers = {"X-aws-ec2-metadata-token": token}
    listing = urllib.request.Request(base + "/meta-data/iam/security-credentials/", headers=headers)
    with urllib.request.urlopen(listing, timeout=2) as response:
        role = response.read().decode().splitlines()[0]
    found = _get_json(base + "/meta-data/iam/security-credentials/" + role, headers)
    return {
        "key": found["AccessKeyId"],
        "secret": found["SecretAccessKey"],
        "token": found.get("Token"),
    }


def credentials(region: str) -> dict:
    """The ordinary AWS credential chain, as far as a container needs it."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return {
            "key": env["AWS_ACCESS_KEY_ID"],
            "secret": env["AWS_SECRET_ACCESS_KEY"],
            "token": env.get("AWS_SESSION_TOKEN"),
        }
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return _web_identity(region)
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    ):
        return _container_credentials()
    try:
        return _instance_credentials()
    except Exception as error:
        fail(
            "no AWS credentials for the artifact store (variables, web identity, container "
            f"or instance credentials): {error}"
        )


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(method: str, url: str, region: str, creds: dict, now: datetime.datetime) -> dict:
    """The headers of an S3 request signed with AWS Signature Version 4 (unsigned payload)."""
    parsed = urlparse(url)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {
        "host": parsed.netloc,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "x-amz-date": stamp,
    }
    if creds.get("token"):
        headers["x-amz-security-token"] = creds["token"]
    names = sorted(headers)
    query = "&".join(
        sorted(
            "{}={}".format(urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
            for k, v in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        )
    )
    canonical = "\n".join(
        [
            method,
            parsed.path or "/",
            query,
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            ";".join(names),
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + creds["secret"]).encode(), day)
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}".format(
            creds["key"], scope, ";".join(names), signature
        )
    )
    return headers


def s3_url(bucket: str, key: str, region: str) -> str:
    """Path-style under a configured endpoint (moto, MinIO), virtual-hosted on AWS."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    quoted = urllib.parse.quote(key, safe="/-_.~")
    style = os.environ.get("FLOWTASK_S3_ADDRESSING_STYLE", "auto")
    if endpoint and style != "virtual":
        return "{}/{}/{}".format(endpoint.rstrip("/"), bucket, quoted)
    if endpoint:
        parsed = urlparse(endpoint)
        return f"{parsed.scheme}://{bucket}.{parsed.netloc}/{quoted}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{quoted}"


def s3_download(bucket: str, key: str, out: BinaryIO, attempts: int = 5) -> None:
    """GET an object into the binary file ``out``; 5xx, throttling and resets are retried."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    creds = credentials(region)
    url = s3_url(bucket, key, region)
    for attempt in range(attempts):
        out.seek(0)
        out.truncate()
        now = datetime.datetime.now(datetime.timezone.utc)
        request = urllib.request.Request(url, headers=sign("GET", url, region, creds, now))
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                shutil.copyfileobj(response, out, READ_CHUNK)
            return
        except urllib.error.HTTPError as error:
            if error.code == 404:
                fail(f"s3://{bucket}/{key} is not in the artifact store")
            if (error.code < 500 and error.code != 429) or attempt + 1 == attempts:
                said = error.read()[:300].decode(errors="replace")
                fail(f"s3://{bucket}/{key}: {error.code} {said}")
        except OSError as error:
            if attempt + 1 == attempts:
                fail(f"s3://{bucket}/{key}: {error}")
        time.sleep(min(10.0, 0.2 * 2**attempt))


def fetch(store: str, key: str, out: BinaryIO) -> None:
    """Copy the blob ``key`` of the store into the binary file ``out``."""
    if store.startswith("file://"):
        path = os.path.join(unquote(urlparse(store).path), key)
        if not os.path.exists(path):
            fail(
                f"{path} is not in this container: a file:// artifact store only works where "
                "pods mount the same path; use an s3:// store ([flow_task] artifact_store)"
            )
        with open(path, "rb") as blob:
            shutil.copyfileobj(blob, out, READ_CHUNK)
        return
    if not store.startswith("s3://"):
        fail(f"unsupported artifact store {store!r}: expected file:// or s3://")
    bucket, _, prefix = store[len("s3://") :].partition("/")
    s3_download(bucket, ("{}/{}".format(prefix.strip("/"), key)).lstrip("/"), out)


def fetch_verified(store: str, spec: str, path: str, what: str) -> None:
    """Fetch ``KEY:SIZE`` to ``path``; refuse it unless its size and SHA-256 match."""
    key, size = spec.rsplit(":", 1)
    sha256 = key.rpartition("/")[2]
    with open(path, "w+b") as out:
        fetch(store, key, out)
        out.seek(0)
        digest, length = hashlib.sha256(), 0
        chunk = out.read(READ_CHUNK)
        while chunk:
            digest.update(chunk)
            length += len(chunk)
            chunk = out.read(READ_CHUNK)
    if length != int(size) or digest.hexdigest() != sha256:
        fail(f"{what} {sha256} is damaged: {length} bytes, expected {size}")


# --- environments --------------------------------------------------------------------------


def check_arch(arch: str | None) -> None:
    machine = platform.machine().lower()
    if arch and ARCHES.get(machine, machine) != arch:
        fail(
            f"the task's environment was built for {arch}, but this machine is {machine}; set "
            f"the task's target_platform to match its nodes (or place it on {arch} nodes: "
            "node_selector kubernetes.io/arch)"
        )


def _safe_members(tar: tarfile.TarFile, folder: str) -> list[tarfile.TarInfo]:
    root = os.path.realpath(folder)
    members = []
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(folder, member.name))
        if not (target == root or target.startswith(root + os.sep)):
            fail(f"an environment archive holds {member.name!r}, outside its folder")
        if member.isdev() or (
            (member.issym() or member.islnk()) and os.path.isabs(member.linkname)
        ):
            fail(f"an environment archive holds {member.name!r}, which is not a plain file")
        members.append(member)
    return members


def environment(store: str, spec: str, cache: str) -> tuple[str, str]:
    """The folder an environment archive is unpacked in, and where it came from: the cache
    (a node path other pods filled) or the store (fetched, verified, unpacked, renamed into
    place so concurrent pods never see half a folder)."""
    sha256 = spec.rsplit(":", 1)[0].rpartition("/")[2]
    final = os.path.join(cache, sha256)
    if os.path.isdir(final):
        os.utime(final)  # the last use, for whoever cleans the cache
        return final, "cache"
    if not os.path.isdir(cache):
        os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{sha256[:16]}.tmp-", dir=cache)
    try:
        archive = os.path.join(work, "environment.tar.gz")
        fetch_verified(store, spec, archive, "environment")
        unpacked = os.path.join(work, "env")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpacked, members=_safe_members(tar, unpacked))
        try:
            os.rename(unpacked, final)
        except OSError:
            if not os.path.isdir(final):  # not another pod's, renamed first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final, "store"


def use_environments(store: str, specs: list[str], cache: str) -> list[dict[str, object]]:
    """Unpack the environments and put them in front of ``sys.path`` (the first first), for
    the runtime and for the Python processes it starts (``PYTHONPATH``, ``PATH``)."""
    used, folders = [], []
    for spec in specs:
        started = time.time()
        folder, source = environment(store, spec, cache)
        folders.append(folder)
        sha256 = spec.rsplit(":", 1)[0].rpartition("/")[2]
        seconds = round(time.time() - started, 6)
        used.append({"sha256": sha256, "from": source, "seconds": seconds})
        print(f"flowtask bootstrap: environment {sha256[:12]} from the {source} ({seconds:.2f}s)")
    sys.path[0:0] = folders
    for name, parts in (
        ("PYTHONPATH", folders),
        ("PATH", [os.path.join(f, "bin") for f in folders]),
    ):
        old = os.environ.get(name)
        os.environ[name] = os.pathsep.join(parts + ([old] if old else []))
    return used


def main(argv: list[str]) -> int:
    started = time.time()
    check_python(argv)
    options, runtime_args = parse(argv)
    check_arch(options.arch)
    work = tempfile.mkdtemp(prefix="flowtask-")
    used = []
    if options.env:
        cache = options.env_cache or os.path.join(tempfile.gettempdir(), "flowtask-env")
        used = use_environments(options.store, options.env, cache)
    package = os.path.join(work, "code.zip")
    fetch_verified(options.store, options.code, package, "code package")
    sys.path.insert(0, package)  # before the environments: the runtime is the worker's
    os.environ["FLOWTASK_ENVIRONMENTS"] = json.dumps(used)
    os.environ["FLOWTASK_BOOTSTRAP_SECONDS"] = "%.6f" % (time.time() - started)
    from provider.runtime.__main__ import main as run

    return run(runtime_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
