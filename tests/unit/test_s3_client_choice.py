"""The boto3-free client's pure parts: SigV4 against AWS's published examples, and which
configurations ``auto`` gives it (docs/design.md "The read path")."""

from __future__ import annotations

import calendar
import time

import pytest

from cache_sync.config import Settings
from cache_sync.errors import ConfigError
from cache_sync.storage.s3common import choose_client
from cache_sync.storage.sigv4 import EMPTY_SHA256, Signer, canonical_query

# https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html (examples)
KEY, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
NOW = calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
HOST = "examplebucket.s3.amazonaws.com"


def test_sigv4_get_object_example():
    h = Signer(KEY, SECRET, "us-east-1").sign("GET", HOST, "/test.txt", "",
                                             {"Range": "bytes=0-9"}, EMPTY_SHA256, now=NOW)
    assert h["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_sigv4_list_objects_example():
    q = canonical_query({"prefix": "J", "max-keys": "2"})
    assert q == "max-keys=2&prefix=J"
    h = Signer(KEY, SECRET, "us-east-1").sign("GET", HOST, "/", q, {}, now=NOW)
    assert h["authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


def test_the_secret_is_in_no_repr():
    s = Signer(KEY, SECRET, "us-east-1", session_token="tok-secret")
    assert SECRET not in repr(s) and "tok-secret" not in repr(s)
    signed = s.sign("GET", HOST, "/k", "", {}, now=NOW)
    assert signed["x-amz-security-token"] == "tok-secret"  # sent, and signed
    assert "x-amz-security-token" in signed["authorization"]


BASE = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s" * 40, "HOME": "/nonexistent"}


@pytest.mark.parametrize("env,client,why", [
    ({**BASE, "CACHE_SYNC_ENDPOINT_URL": "http://127.0.0.1:9000"}, "lite", "custom endpoint"),
    ({**BASE, "AWS_REGION": "eu-west-1"}, "lite", "AWS region"),
    ({**BASE, "B2_REGION": "us-west-004"}, "lite", "custom endpoint"),
    ({**BASE, "CACHE_SYNC_ENDPOINT_URL": "https://h", "HTTPS_PROXY": "http://p:3128"}, "boto3",
     "HTTPS_PROXY"),
    ({**BASE, "CACHE_SYNC_ENDPOINT_URL": "https://h", "HTTPS_PROXY": "http://p:3128",
      "NO_PROXY": "h"}, "lite", "custom endpoint"),
    ({**BASE, "CACHE_SYNC_ENDPOINT_URL": "http://h", "HTTPS_PROXY": "http://p:3128"}, "lite",
     "custom endpoint"),  # only the endpoint's scheme's proxy applies
    ({**BASE, "AWS_PROFILE": "dev", "AWS_REGION": "eu-west-1"}, "boto3", "profile"),
    ({"AWS_REGION": "eu-west-1", "HOME": "/nonexistent"}, "boto3", "no key"),
    ({**BASE}, "boto3", "without a region"),
    ({**BASE, "AWS_REGION": "cn-north-1"}, "boto3", "partition"),
    ({**BASE, "AWS_REGION": "eu-west-1", "AWS_USE_FIPS_ENDPOINT": "true"}, "boto3", "FIPS"),
    ({**BASE, "AWS_REGION": "eu-west-1", "CACHE_SYNC_S3_CLIENT": "boto3"}, "boto3", "=boto3"),
])
def test_auto_takes_the_lite_client_only_where_it_is_faithful(env, client, why):
    s = Settings.from_env(env, root="/tmp/r", remote="s3://bucket-1/p")
    assert s.s3_client == client
    assert why in s.sources["s3_client"]


def test_a_bucket_name_that_cannot_be_a_host_keeps_boto3_on_aws():
    s = Settings.from_env({**BASE, "AWS_REGION": "eu-west-1"}, root="/tmp/r",
                          remote="s3://my.dotted.bucket/p")
    assert s.s3_client == "boto3" and "host name" in s.sources["s3_client"]


def test_the_aws_config_file_with_s3_settings_keeps_boto3(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text("[default]\nregion = eu-west-1\n")
    env = {**BASE, "AWS_REGION": "eu-west-1", "AWS_CONFIG_FILE": str(cfg)}
    assert choose_client("auto", env, endpoint=None, region="eu-west-1", profile=None,
                         bucket="b-1", static_keys=True)[0] == "lite"
    cfg.write_text("[default]\nregion = eu-west-1\ns3 =\n  addressing_style = path\n")
    client, why = choose_client("auto", env, endpoint=None, region="eu-west-1", profile=None,
                                bucket="b-1", static_keys=True)
    assert client == "boto3" and "s3" in why


def test_forcing_lite_where_it_cannot_work_is_one_clear_config_error():
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"AWS_REGION": "eu-west-1", "CACHE_SYNC_S3_CLIENT": "lite",
                           "HOME": "/nonexistent"}, root="/tmp/r", remote="s3://b-1/p")
    assert "CACHE_SYNC_S3_CLIENT=lite" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        Settings.from_env({**BASE, "CACHE_SYNC_S3_CLIENT": "fast"}, root="/tmp/r",
                          remote="s3://b-1/p")
