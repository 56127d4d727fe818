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

Usage: ``--python X.Y --store URI --code KEY:SIZE [--env KEY:SIZE[,KEY:SIZE]]... [--arch ARCH]
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
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any, BinaryIO, NoReturn
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
    parser.add_argument(
        "--env", action="append", default=[], help="environments' KEY:SIZE, comma-separated"
    )
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


# S3's addresses as botocore's endpoint rules make them (ForcePathStyle, UseGlobalEndpoint,
# aws.partition, aws.isVirtualHostableS3Bucket), without FIPS, dual-stack, Accelerate or S3
# Express directory buckets. tests/test_bootstrap_s3.py compares them with botocore's.
#: (region pattern, DNS suffix) of each partition in botocore's partitions.json, in its order:
#: the first that matches wins, else the first.
PARTITIONS = (
    (r"^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$", "amazonaws.com"),
    (r"^cn\-\w+\-\d+$", "amazonaws.com.cn"),
    (r"^eusc\-(de)\-\w+\-\d+$", "amazonaws.eu"),
    (r"^us\-iso\-\w+\-\d+$", "c2s.ic.gov"),
    (r"^us\-isob\-\w+\-\d+$", "sc2s.sgov.gov"),
    (r"^eu\-isoe\-\w+\-\d+$", "cloud.adc-e.uk"),
    (r"^us\-isof\-\w+\-\d+$", "csp.hci.ic.gov"),
    (r"^us\-gov\-\w+\-\d+$", "amazonaws.com"),
)
#: Regions a partition names outright rather than by its pattern.
GLOBAL_REGIONS = {
    "aws-global": "amazonaws.com",
    "aws-cn-global": "amazonaws.com.cn",
    "aws-iso-global": "c2s.ic.gov",
    "aws-iso-b-global": "sc2s.sgov.gov",
    "aws-iso-e-global": "cloud.adc-e.uk",
    "aws-iso-f-global": "csp.hci.ic.gov",
    "aws-us-gov-global": "amazonaws.com",
}
_HOST_LABEL = re.compile(r"^(?!-)[a-zA-Z\d-]{1,63}(?<!-)$")
_IPV4 = re.compile(r"^(?:[0-9]{1,3}\.){3}[0-9]{1,3}$")
#: What botocore takes for a region a redirect names.
_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


def dns_suffix(region: str) -> str:
    """The DNS suffix of the region's partition (``amazonaws.com.cn`` for ``cn-north-1``)."""
    if region in GLOBAL_REGIONS:
        return GLOBAL_REGIONS[region]
    for pattern, suffix in PARTITIONS:
        if re.match(pattern, region):
            return suffix
    return PARTITIONS[0][1]


def virtual_hostable(bucket: str, dots: bool) -> bool:
    """Whether ``bucket`` can be a host name's first label(s): lower case, 3 or more characters,
    not an IP address, and (unless ``dots``) no dot, whose TLS certificate would not match."""
    if len(bucket) < 3 or bucket.lower() != bucket or _IPV4.match(bucket):
        return False
    return all(_HOST_LABEL.match(label) for label in (bucket.split(".") if dots else [bucket]))


def _is_ip(host: str | None) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def s3_url(bucket: str, key: str, region: str) -> str:
    """The URL of an object, as botocore builds it for the runtime's S3 client in the same
    container: its endpoint (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``), region and
    addressing style (``FLOWTASK_S3_ADDRESSING_STYLE``). On AWS, path style for a bucket whose
    name has dots (``https://s3.eu-west-1.amazonaws.com/my.bucket/...``), virtual-hosted
    otherwise, with the partition's suffix; under an endpoint, path style unless told
    ``virtual``."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = os.environ.get("FLOWTASK_S3_ADDRESSING_STYLE", "auto")
    path = "/" + urllib.parse.quote(key, safe="/~") if key else ""  # no key: the bucket
    encoded = urllib.parse.quote(bucket, safe="")
    if endpoint:
        url = urlparse(endpoint)
        if virtual_hostable(bucket, False):
            virtual = style == "virtual" and not _is_ip(url.hostname)
        else:  # a dotted name: a virtual host over plain HTTP only, where no certificate is
            virtual = style == "virtual" and url.scheme == "http" and virtual_hostable(bucket, True)
        if virtual:
            within = url.path.rstrip("/") + path if path else url.path or "/"
            return f"{url.scheme}://{bucket}.{url.netloc}{within}"
        base = url.path if url.path.endswith("/") else url.path + "/"
        return f"{url.scheme}://{url.netloc}{base}{encoded}{path}"
    legacy = os.environ.get("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "legacy") == "legacy"
    if region == "aws-global" or (region == "us-east-1" and legacy):
        host = "s3." + dns_suffix(region)
    else:
        host = f"s3.{region}.{dns_suffix(region)}"
    if style != "path" and virtual_hostable(bucket, False):
        return "https://{}.{}{}".format(bucket, host, path or "/")
    return f"https://{host}/{encoded}{path}"


def signing_region(region: str) -> str:
    return "us-east-1" if region == "aws-global" else region


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """S3 redirects to another region with the request signed for this one: not followed."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _get(url: str, region: str, creds: dict, method: str = "GET") -> Any:
    now = datetime.datetime.now(datetime.timezone.utc)
    headers = sign(method, url, signing_region(region), creds, now)
    request = urllib.request.Request(url, headers=headers, method=method)
    return _OPENER.open(request, timeout=60)


def _error_fields(body: bytes) -> dict:
    """``Code`` and ``Region`` of an S3 error body, where it has them."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    return {child.tag: child.text or "" for child in root if child.tag in ("Code", "Region")}


def bucket_region(
    error: urllib.error.HTTPError, said: bytes, bucket: str, region: str, creds: dict
) -> str | None:
    """The region S3 says the bucket is in, when ``error`` says it is not in ``region``, as
    botocore reads it (S3RegionRedirectorv2): a redirect status, ``PermanentRedirect``,
    ``AuthorizationHeaderMalformed`` naming a region, ``IllegalLocationConstraintException``;
    the region from the ``x-amz-bucket-region`` header, else the error's ``Region``, else a
    HEAD of the bucket."""
    fields = _error_fields(said)
    code = fields.get("Code")
    moved = (
        error.code in (301, 302, 307)
        or code in ("PermanentRedirect", "IllegalLocationConstraintException")
        or (code == "AuthorizationHeaderMalformed" and "Region" in fields)
    )
    if not moved:
        return None
    found = error.headers.get("x-amz-bucket-region") or fields.get("Region")
    if not found:
        try:
            with _get(s3_url(bucket, "", region), region, creds, "HEAD") as response:
                found = response.headers.get("x-amz-bucket-region")
        except urllib.error.HTTPError as head:
            found = head.headers.get("x-amz-bucket-region")
        except OSError:
            found = None
    return found if found and _REGION.match(found) else None


def s3_download(bucket: str, key: str, out: BinaryIO, attempts: int = 5) -> None:
    """GET an object into the binary file ``out``; 5xx, throttling and resets are retried, and a
    bucket in another region than the container's is followed there once."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    creds = credentials(region)
    redirected = False
    attempt = 0
    while True:
        out.seek(0)
        out.truncate()
        try:
            with _get(s3_url(bucket, key, region), region, creds) as response:
                shutil.copyfileobj(response, out, READ_CHUNK)
            return
        except urllib.error.HTTPError as error:
            if error.code == 404:
                fail(f"s3://{bucket}/{key} is not in the artifact store")
            said = error.read()[:2000]
            moved = None if redirected else bucket_region(error, said, bucket, region, creds)
            if moved is not None and moved != region:
                print(f"flowtask bootstrap: bucket {bucket} is in {moved}, not {region}")
                region, redirected = moved, True
                continue
            if (error.code < 500 and error.code != 429) or attempt + 1 == attempts:
                fail(f"s3://{bucket}/{key}: {error.code} {said[:300].decode(errors='replace')}")
        except OSError as error:
            if attempt + 1 == attempts:
                fail(f"s3://{bucket}/{key}: {error}")
        time.sleep(min(10.0, 0.2 * 2**attempt))
        attempt += 1


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
    options.env = [spec for given in options.env for spec in given.split(",") if spec]
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
