"""The container bootstrap reads S3 with the standard library: its addresses and its region
redirect, against botocore's for the same bucket, region, endpoint and addressing style.

The bootstrap cannot import botocore (it runs before any package is there), so it carries the
rules; these tests hold it to botocore's answers, computed in the test process.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.session
import pytest
from botocore.config import Config

from provider.runtime import bootstrap

BUCKETS = (
    "flow-artifacts",
    "my.bucket",  # a dot: a virtual host's TLS certificate (*.s3...) would not match
    "my.dotted.bucket.name",
    "bucket-1.example",
    "x--y",
    "abc",
    "ab",  # shorter than a bucket's name may be
    "a" * 63,
    "192.168.1.1",  # looks like an IP address
    "Legacy_Bucket",  # us-east-1 kept names with capitals and underscores
)
REGIONS = (
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "ap-southeast-2",
    "il-central-1",
    "mx-central-1",
    "cn-north-1",
    "cn-northwest-1",
    "us-gov-west-1",
    "us-gov-east-1",
    "us-iso-east-1",
    "us-isob-east-1",
    "eu-isoe-west-1",
    "us-isof-south-1",
    "eusc-de-east-1",
    "aws-global",
    "mars-east-1",  # no partition names it: the first one's suffix
)
ENDPOINTS = (
    "http://127.0.0.1:5000",
    "http://localhost:4566",
    "http://[::1]:9000",
    "https://minio.example.com",
    "https://s3.example.com:9000",
    "https://minio.example.com/base",
    "https://minio.example.com/base/",
)
STYLES = ("auto", "path", "virtual")
KEYS = (
    "prefix/data/ab/" + "ab" * 32,
    "runs/dag/manual__2026-03-01T10:00:00+00:00/fit/-1/1/result.json",
    "odd key/ü+~!*'().json",
)
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "FLOWTASK_S3_ADDRESSING_STYLE",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_CONFIG_FILE",
    "AWS_PROFILE",
)
REDIRECT = ("us-east-1", "eu-west-1")  # the container's region, and the bucket's
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")


class _Sent(Exception):
    pass


_SESSION = botocore.session.get_session()  # one loader: the S3 model is read once


def _botocore_urls(region: str, style: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(bucket, key) -> the URL botocore's GetObject (HeadBucket for no key) goes to, and the
    region it signs for, for a client as the runtime makes it (provider/store/s3.py) with the
    environment as set."""
    client = _SESSION.create_client(
        "s3",
        region_name=region,
        aws_access_key_id="AKID",
        aws_secret_access_key="secret",
        config=Config(s3={"addressing_style": style}),
    )
    sent: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> None:
        sent["url"] = request.url
        sent["region"] = SCOPE.search(request.headers["Authorization"].decode())[1]
        raise _Sent

    client.meta.events.register("before-send.s3", capture)
    found = {}
    for bucket in BUCKETS:
        with pytest.raises(_Sent):
            client.head_bucket(Bucket=bucket)  # what a region redirect may ask
        found[bucket, ""] = (sent["url"], sent["region"])
        for key in KEYS if bucket in BUCKETS[:2] else KEYS[:1]:  # the keys' quoting: twice
            with pytest.raises(_Sent):
                client.get_object(Bucket=bucket, Key=key)
            found[bucket, key] = (sent["url"], sent["region"])
    return found


def _compare(region: str, style: str) -> list[str]:
    wrong = []
    for (bucket, key), (url, signing) in _botocore_urls(region, style).items():
        ours = (bootstrap.s3_url(bucket, key, region), bootstrap.signing_region(region))
        if ours != (url, signing):
            wrong.append(f"{region} {style} {bucket!r} {key!r}: ours {ours}, botocore's {url}")
    return wrong


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    return monkeypatch


def test_the_partitions_are_botocores():
    """Its own table of partitions (region pattern -> DNS suffix), in botocore's order."""
    data = json.loads((Path(botocore.__file__).parent / "data" / "partitions.json").read_text())
    partitions = data["partitions"]
    assert (
        tuple((p["regionRegex"], p["outputs"]["dnsSuffix"]) for p in partitions)
        == bootstrap.PARTITIONS
    )
    named = {
        region: p["outputs"]["dnsSuffix"]
        for p in partitions
        for region in p["regions"]
        if not any(re.match(pattern, region) for pattern, _ in bootstrap.PARTITIONS)
    }
    assert named == bootstrap.GLOBAL_REGIONS


@pytest.mark.parametrize("style", STYLES)
def test_addresses_on_aws_are_botocores(clean_env: pytest.MonkeyPatch, style: str):
    """Every partition (aws, aws-cn, GovCloud, the isolated ones), dotted names in path style,
    us-east-1's global endpoint and its regional one, for every addressing style."""
    clean_env.setenv("FLOWTASK_S3_ADDRESSING_STYLE", style)
    wrong = [line for region in REGIONS for line in _compare(region, style)]
    clean_env.setenv("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "regional")
    wrong += _compare("us-east-1", style)
    assert not wrong, "\n".join(wrong[:20])
    assert bootstrap.s3_url("my.bucket", "k", "eu-west-1") == (
        "https://s3.eu-west-1.amazonaws.com/my.bucket/k"  # its certificate is S3's own
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_addresses_under_an_endpoint_are_botocores(clean_env: pytest.MonkeyPatch, endpoint: str):
    """``AWS_ENDPOINT_URL_S3`` (moto, MinIO, LocalStack): path style unless told ``virtual``;
    then a virtual host where botocore makes one (not on an IP address)."""
    clean_env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    wrong = []
    for style in STYLES:
        clean_env.setenv("FLOWTASK_S3_ADDRESSING_STYLE", style)
        wrong += _compare("eu-west-1", style)
    assert not wrong, "\n".join(wrong[:20])


# --- a bucket in another region ---------------------------------------------------------------


class RegionalS3(ThreadingHTTPServer):
    """S3 on 127.0.0.1 (path style) for one bucket in ``home``: a request signed for another
    region is refused as S3 refuses it, by ``mode``: ``permanent`` (301 PermanentRedirect with
    ``x-amz-bucket-region``), ``malformed`` (400 AuthorizationHeaderMalformed naming the region
    in its body only), ``bare`` (a 301 that says nothing; a HEAD of the bucket tells) or
    ``denied`` (403, which is no redirect). Every request is recorded: method, path, region."""

    def __init__(self, bucket: str, home: str, objects: dict[str, bytes], mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _RegionalHandler)
        self.bucket, self.home, self.objects, self.mode = bucket, home, objects, mode
        self.seen: list[tuple[str, str, str]] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class _RegionalHandler(BaseHTTPRequestHandler):
    server: RegionalS3

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, extra: str = "", **headers: str) -> None:
        body = f"<Error><Code>{code}</Code><Message>refused</Message>{extra}</Error>"
        self._reply(status, body.encode(), **headers)

    def _handle(self) -> None:
        s3 = self.server
        match = SCOPE.search(self.headers.get("Authorization", ""))
        region = match[1] if match else ""
        s3.seen.append((self.command, self.path, region))
        bucket, _, key = self.path.lstrip("/").partition("/")
        if bucket != s3.bucket:
            return self._error(404, "NoSuchBucket")
        if region != s3.home:
            here = {"x_amz_bucket_region": s3.home}
            if s3.mode == "denied":
                return self._error(403, "AccessDenied", **here)
            if self.command == "HEAD" or s3.mode == "permanent":
                return self._error(301, "PermanentRedirect", **here)
            if s3.mode == "malformed":
                named = f"<Region>{s3.home}</Region>"
                return self._error(400, "AuthorizationHeaderMalformed", named)
            return self._reply(301)
        if not key:
            return self._reply(200, x_amz_bucket_region=s3.home)
        if key not in s3.objects:
            return self._error(404, "NoSuchKey")
        return self._reply(200, s3.objects[key])

    do_GET = do_HEAD = _handle


@pytest.fixture
def regional_s3(request: pytest.FixtureRequest) -> Iterator[Any]:
    servers = []

    def start(mode: str) -> RegionalS3:
        server = RegionalS3("my.bucket", "eu-west-1", {"data/ab/blob": b"the blob"}, mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["permanent", "malformed", "bare"])
def test_a_bucket_in_another_region_is_followed_there_as_botocore_does(
    clean_env: pytest.MonkeyPatch, regional_s3: Any, mode: str
):
    """The container's region is us-east-1, the bucket's eu-west-1: the bootstrap asks again,
    signed for the region S3 named, as botocore's client does, request for request."""
    seen = {}
    for who in ("botocore", "bootstrap"):
        s3 = regional_s3(mode)
        clean_env.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            clean_env.setenv(name, value)
        clean_env.delenv("AWS_REGION", raising=False)
        if who == "botocore":
            client = boto3.session.Session().client("s3", config=Config(s3={}))
            body = client.get_object(Bucket="my.bucket", Key="data/ab/blob")["Body"].read()
        else:
            out = io.BytesIO()
            bootstrap.s3_download("my.bucket", "data/ab/blob", out)
            body = out.getvalue()
        assert body == b"the blob", who
        seen[who] = s3.seen
    first, last = (("GET", "/my.bucket/data/ab/blob", region) for region in REDIRECT)
    if mode == "bare":  # HEAD the bucket; botocore's HEAD is redirected too, which tells no more
        head = ("HEAD", "/my.bucket", "us-east-1")
        assert seen["bootstrap"] == [first, head, last]
        assert seen["botocore"] == [first, head, ("HEAD", "/my.bucket", "eu-west-1"), last]
    else:
        assert seen["bootstrap"] == seen["botocore"] == [first, last]


def test_a_refusal_that_names_no_other_region_is_not_followed(
    clean_env: pytest.MonkeyPatch, regional_s3: Any, capsys: pytest.CaptureFixture[str]
):
    s3 = regional_s3("denied")
    clean_env.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKID")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    clean_env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(SystemExit):
        bootstrap.s3_download("my.bucket", "data/ab/blob", io.BytesIO())
    assert [region for _, _, region in s3.seen] == ["us-east-1"]
    assert "s3://my.bucket/data/ab/blob: 403 <Error><Code>AccessDenied" in capsys.readouterr().err
