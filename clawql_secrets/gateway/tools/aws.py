"""``cloud.aws``: one allowed boto3 operation with the session's own STS credentials.

The agent's OpenBao identity token (``identity/oidc/token/<role>``, read with
its per-call token; ``aud`` is STS, claims name tenant, agent and agent role)
is exchanged at STS (``AssumeRoleWithWebIdentity``, an unsigned call) for
short-lived credentials of the role ARN configured for the agent role and
tenant. AWS checks the token's signature against OpenBao's
``.well-known/keys`` and the role's trust policy; the gateway adds an
operation allow-list per agent role. Credentials are cached per session on
this replica until a minute before they expire; they are never returned or
logged, and they die by TTL (STS credentials cannot be revoked early).
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from botocore import UNSIGNED
from pydantic import BaseModel, ConfigDict, Field

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, quiet_loggers, tool_settings

NAME = "cloud.aws"
_OP_RE = re.compile(r"^[a-z0-9-]{2,40}:[a-z][a-z0-9_]{1,80}$")
# Operations whose answer is itself a credential: never allowed, whatever the config.
_CREDENTIAL_OPS = frozenset(
    {
        "sts:assume_role",
        "sts:assume_role_with_web_identity",
        "sts:assume_role_with_saml",
        "sts:assume_root",
        "sts:get_session_token",
        "sts:get_federation_token",
        "iam:create_access_key",
        "iam:create_login_profile",
        "iam:update_login_profile",
        "iam:create_service_specific_credential",
        "iam:reset_service_specific_credential",
        "sso:get_role_credentials",
        "cognito-identity:get_credentials_for_identity",
        "cognito-identity:get_open_id_token",
        "ecr:get_authorization_token",
        "rds:generate_db_auth_token",
        "redshift:get_cluster_credentials",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AWSRolePolicy(_Strict):
    role_arn_template: str = Field(min_length=20)  # may use {tenant}, {agent_role}
    operations: list[str] = Field(min_length=1)  # "s3:list_buckets", "sts:get_caller_identity"


class AWSSettings(_Strict):
    roles: dict[str, AWSRolePolicy] = {}
    oidc_role_template: str = "{agent_role}-aws"
    region: str = "us-east-1"
    endpoint_url: str | None = None  # a local emulator in tests; AWS when unset
    duration_seconds: int = Field(default=900, ge=900, le=3600)
    max_result_bytes: int = Field(default=1_000_000, ge=1024, le=64_000_000)
    timeout: float = Field(default=10.0, gt=0, le=120)


class AWSArgs(_Strict):
    service: str = Field(min_length=2, max_length=40)
    operation: str = Field(min_length=2, max_length=80)
    params: dict[str, Any] = {}


class _Creds:
    """One session's STS credentials on this replica (a session resource)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, str] = {}
        self.expires = 0.0

    def close(self) -> None:
        with self.lock:
            self.values.clear()
            self.expires = 0.0


def _jsonable(value: Any, budget: int) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if hasattr(value, "read"):  # a StreamingBody: read at most the budget
        data = value.read(budget + 1)
        value.close()
        if len(data) > budget:
            raise RequestRejected(
                "result_too_large", f"the result exceeds {budget} bytes", status=422
            )
        try:
            return data.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(data).decode()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, budget) for v in value]
    return str(value)


class AWSTool:
    name = NAME
    args_model = AWSArgs

    def __init__(self, settings: AWSSettings) -> None:
        self.settings = settings
        for role, pol in settings.roles.items():
            bad = [op for op in pol.operations if not _OP_RE.fullmatch(op)]
            if bad:
                raise ConfigError(
                    f"tools.{NAME}.roles.{role}: operations must be 'service:snake_case_name', "
                    f"not {bad[0]!r}"
                )
            creds = sorted(set(pol.operations) & _CREDENTIAL_OPS)
            if creds:
                raise ConfigError(
                    f"tools.{NAME}.roles.{role}: {creds[0]!r} returns credentials; not allowed"
                )
        self._cfg = botocore.config.Config(
            region_name=settings.region,
            connect_timeout=settings.timeout,
            read_timeout=settings.timeout,
            retries={"max_attempts": 2},
        )

    def run(self, ctx: ToolContext, args: AWSArgs) -> dict[str, Any]:
        c = ctx.claims
        policy = self.settings.roles.get(c.agent_role)
        if policy is None:
            raise AccessDenied("aws_not_allowed", "this agent role has no AWS access")
        op = f"{args.service}:{args.operation}"
        if op not in policy.operations:
            raise AccessDenied("operation_not_allowed", f"{op[:100]!r} is not an allowed operation")
        role_arn = policy.role_arn_template.format(tenant=c.tenant, agent_role=c.agent_role)
        creds = ctx.resource(f"aws:{role_arn}", _Creds)
        values = self._credentials(ctx, creds, role_arn)
        client = boto3.session.Session().client(
            args.service,
            endpoint_url=self.settings.endpoint_url,
            aws_access_key_id=values["AccessKeyId"],
            aws_secret_access_key=values["SecretAccessKey"],
            aws_session_token=values["SessionToken"],
            config=self._cfg,
        )
        try:
            # API operations only: never helpers such as generate_presigned_url, whose
            # result would carry a signature made with the session's credentials.
            if args.operation not in client.meta.method_to_api_mapping:
                raise RequestRejected("unknown_operation", f"{op[:100]!r} is not an API operation")
            method = getattr(client, args.operation)
            resp = method(**args.params)
        except botocore.exceptions.ParamValidationError:
            raise RequestRejected("aws_bad_params", f"invalid parameters for {op[:100]}") from None
        except botocore.exceptions.ClientError as exc:
            raise _translate(exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise BackendUnavailable(
                "aws_unavailable", f"the AWS call failed ({type(exc).__name__})", status=502
            ) from None
        finally:
            client.close()
        resp.pop("ResponseMetadata", None)
        budget = self.settings.max_result_bytes
        text = json.dumps(_jsonable(resp, budget))
        if len(text) > budget:
            raise RequestRejected(
                "result_too_large", f"the result exceeds {budget} bytes", status=422
            )
        # Belt and braces: the session's own secrets never leave, even if echoed.
        for secret in (values["SecretAccessKey"], values["SessionToken"]):
            text = text.replace(json.dumps(secret)[1:-1], "[redacted]")
        values.clear()
        return {"result": json.loads(text)}

    def _credentials(self, ctx: ToolContext, creds: _Creds, role_arn: str) -> dict[str, str]:
        with creds.lock:
            if creds.values and time.time() < creds.expires - 60:
                return dict(creds.values)
            c = ctx.claims
            oidc_role = self.settings.oidc_role_template.format(
                agent_role=c.agent_role, tenant=c.tenant
            )
            lease = ctx.read_secret(f"identity/oidc/token/{oidc_role}")
            token = str(lease.data.get("token", ""))
            if not token:
                raise BackendUnavailable("openbao_error", "OpenBao returned no identity token")
            sts = boto3.session.Session().client(
                "sts",
                endpoint_url=self.settings.endpoint_url,
                config=self._cfg.merge(botocore.config.Config(signature_version=UNSIGNED)),
            )
            try:
                resp = sts.assume_role_with_web_identity(
                    RoleArn=role_arn,
                    RoleSessionName=f"{c.tenant}.{c.agent}"[:56] + "." + c.sid[:7],
                    WebIdentityToken=token,
                    DurationSeconds=self.settings.duration_seconds,
                )
            except botocore.exceptions.ClientError as exc:
                raise _translate(exc) from None
            except botocore.exceptions.BotoCoreError as exc:
                raise BackendUnavailable(
                    "aws_unavailable", f"STS failed ({type(exc).__name__})", status=502
                ) from None
            finally:
                token = ""
                sts.close()
            got = resp.get("Credentials") or {}
            resp.clear()
            creds.values = {
                k: str(got.get(k, "")) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")
            }
            exp = got.get("Expiration")
            creds.expires = (
                exp.timestamp()
                if isinstance(exp, datetime.datetime)
                else time.time() + self.settings.duration_seconds
            )
            got.clear()
            if not all(creds.values.values()):
                creds.values.clear()
                raise BackendUnavailable("aws_unavailable", "STS returned no credentials")
            return dict(creds.values)


def _translate(exc: botocore.exceptions.ClientError) -> Exception:
    """The AWS error code only: messages may quote request values."""
    code = str((exc.response.get("Error") or {}).get("Code", "Unknown"))[:64]
    if code in {"AccessDenied", "AccessDeniedException", "InvalidIdentityToken", "ExpiredToken"}:
        return AccessDenied("aws_denied", f"AWS refused the call ({code})")
    return RequestRejected("aws_error", f"AWS rejected the call ({code})", status=422)


def quiet_sdk_loggers() -> None:
    """botocore's DEBUG logs print request and response bodies: the web identity
    token going to STS, and the credentials coming back. Never below INFO."""
    quiet_loggers("botocore", "boto3", "urllib3", "s3transfer")


def factory(config: GatewayConfig) -> AWSTool:
    quiet_sdk_loggers()
    return AWSTool(tool_settings(config, NAME, AWSSettings))
