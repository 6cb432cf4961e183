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

Validate first, touch secrets after: service and operation names (grammar,
allow-list, a real API operation of the service's model), the parameters (JSON
values only, bounded depth, count and size, then botocore's own validation
against the operation's input shape) are checked before the identity token is
read. The client's credentials are deferred: the exchange happens when botocore
signs the request, so its service customisations' checks come first too. The
session's secret key and session token are redacted from every string of the
result in every form ``reflect`` knows.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.loaders
import botocore.session
import botocore.validate
from botocore import UNSIGNED, xform_name
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, quiet_loggers, tool_settings
from clawql_secrets.gateway.tools.reflect import MIN_SECRET_BYTES, Redactor

NAME = "cloud.aws"
_OP_RE = re.compile(r"^[a-z0-9-]{2,40}:[a-z][a-z0-9_]{1,80}$")
_SERVICE_PATTERN = r"^[a-z0-9][a-z0-9-]{1,39}$"
_OPERATION_PATTERN = r"^[a-z][a-z0-9_]{1,79}$"
_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}|aws-global")
MAX_PARAM_DEPTH = 32
MAX_PARAM_VALUES = 100_000
MAX_PARAM_STRING = 1_000_000
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
    max_params_bytes: int = Field(default=1_000_000, ge=1024, le=16_000_000)
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("region")
    @classmethod
    def _region(cls, region: str) -> str:
        if not _REGION_RE.fullmatch(region):
            raise ValueError("not an AWS region name (like us-east-1)")
        return region


def check_params(params: Any) -> None:
    """``ValueError`` unless ``params`` is JSON values only (64-bit integers, finite
    numbers, text UTF-8 can encode), at most ``MAX_PARAM_DEPTH`` deep and
    ``MAX_PARAM_VALUES`` values. Iterative: a value nested 20,000 deep is refused,
    not a recursion error."""
    stack: list[tuple[Any, int]] = [(params, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_PARAM_VALUES:
            raise ValueError(f"params hold more than {MAX_PARAM_VALUES} values")
        if depth > MAX_PARAM_DEPTH:
            raise ValueError(f"params are nested more than {MAX_PARAM_DEPTH} deep")
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                raise ValueError("params integers must fit in 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("params numbers must be finite")
        elif isinstance(value, str):
            _check_text(value)
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ValueError("params keys must be strings")
                _check_text(k)
                stack.append((v, depth + 1))
        else:
            raise ValueError("params are JSON values only")


def _check_text(text: str) -> None:
    if len(text) > MAX_PARAM_STRING:
        raise ValueError(f"params strings are at most {MAX_PARAM_STRING} characters")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("params strings must be text that UTF-8 can encode") from None


class AWSArgs(_Strict):
    service: str = Field(min_length=2, max_length=40, pattern=_SERVICE_PATTERN)
    operation: str = Field(min_length=2, max_length=80, pattern=_OPERATION_PATTERN)
    params: dict[str, Any] = {}

    @field_validator("params")
    @classmethod
    def _json(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_params(params)
        return params


class _Creds:
    """One session's STS credentials on this replica (a session resource)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, str] = {}
        self.expires = 0.0
        self.redactor: Redactor | None = None

    def close(self) -> None:
        with self.lock:
            self.values.clear()
            self.expires = 0.0
            self.redactor = None


class _DeferredCredentials(botocore.credentials.Credentials):  # type: ignore[misc]
    """The session's STS credentials, fetched when botocore first signs a request.

    botocore builds and checks the whole request (parameters, service
    customisations) before it signs, so a request it refuses never costs an
    identity token. ``account_id`` stays unset: reading it must not fetch.
    """

    def __init__(self, fetch: Callable[[], dict[str, str]]) -> None:
        # No super().__init__(): it would read the keys now.
        self._fetch = fetch
        self._frozen: Any = None
        self.method = "clawql-sts"
        self.account_id = None

    def get_frozen_credentials(self) -> Any:
        if self._frozen is None:
            v = self._fetch()
            self._frozen = botocore.credentials.ReadOnlyCredentials(
                v["AccessKeyId"], v["SecretAccessKey"], v["SessionToken"]
            )
        return self._frozen

    @property
    def access_key(self) -> str:
        return str(self.get_frozen_credentials().access_key)

    @property
    def secret_key(self) -> str:
        return str(self.get_frozen_credentials().secret_key)

    @property
    def token(self) -> str:
        return str(self.get_frozen_credentials().token)


class _OnlyThese(botocore.credentials.CredentialProvider):  # type: ignore[misc]
    """The one credential source of a client session: never the environment's."""

    METHOD = "clawql-sts"

    def __init__(self, creds: Any) -> None:
        super().__init__()
        self._creds = creds

    def load(self) -> Any:
        return self._creds


def _jsonable(value: Any, budget: int, redactor: Redactor | None = None) -> Any:
    r = redactor or _NO_REDACTION
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return r.redact_text(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(r.redact(bytes(value))).decode()}
    if hasattr(value, "read"):  # a StreamingBody: read at most the budget
        data = value.read(budget + 1)
        value.close()
        if len(data) > budget:
            raise RequestRejected(
                "result_too_large", f"the result exceeds {budget} bytes", status=422
            )
        data = r.redact(data)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(data).decode()}
    if isinstance(value, Mapping):
        return {r.redact_text(str(k)): _jsonable(v, budget, r) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, budget, r) for v in value]
    return r.redact_text(str(value))


_NO_REDACTION = Redactor([])


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
        # One data loader for every client: service models are read from disk once.
        self._loader = botocore.loaders.create_loader()
        self._models_lock = threading.Lock()
        self._api_ops: dict[str, tuple[Any, dict[str, str]]] = {}
        models = self._session(None)
        known = set(models.get_available_services())
        for role, pol in settings.roles.items():
            unknown = sorted({op.split(":")[0] for op in pol.operations} - known)
            if unknown:
                raise ConfigError(
                    f"tools.{NAME}.roles.{role}: {unknown[0]!r} is not an AWS service botocore "
                    "knows"
                )
        self._models = models
        self._cfg = botocore.config.Config(
            region_name=settings.region,
            connect_timeout=settings.timeout,
            read_timeout=settings.timeout,
            retries={"max_attempts": 2},
        )

    def _session(self, creds: Any) -> Any:
        """A botocore session sharing the loader, whose only credentials are ``creds``."""
        session = botocore.session.Session()
        session.register_component("data_loader", self._loader)
        resolver = botocore.credentials.CredentialResolver(
            providers=[_OnlyThese(creds)] if creds is not None else []
        )
        session.register_component("credential_provider", resolver)
        return session

    def _operations(self, service: str) -> tuple[Any, dict[str, str]]:
        """The service's model, and ``snake_case`` method name to API operation name."""
        with self._models_lock:
            known = self._api_ops.get(service)
            if known is None:
                model = self._models.get_service_model(service)
                known = (model, {xform_name(name): name for name in model.operation_names})
                self._api_ops[service] = known
            return known

    def run(self, ctx: ToolContext, args: AWSArgs) -> dict[str, Any]:
        s = self.settings
        c = ctx.claims
        policy = s.roles.get(c.agent_role)
        if policy is None:
            raise AccessDenied("aws_not_allowed", "this agent role has no AWS access")
        # 1. Every argument, before the identity token is read.
        op = f"{args.service}:{args.operation}"
        if op not in policy.operations:
            raise AccessDenied("operation_not_allowed", f"{op[:100]!r} is not an allowed operation")
        # API operations only: never helpers such as generate_presigned_url, whose
        # result would carry a signature made with the session's credentials.
        model, api_ops = self._operations(args.service)
        api_name = api_ops.get(args.operation)
        if api_name is None:
            raise RequestRejected("unknown_operation", f"{op[:100]!r} is not an API operation")
        if len(json.dumps(args.params)) > s.max_params_bytes:
            raise RequestRejected(
                "aws_bad_params", f"the parameters exceed {s.max_params_bytes} bytes", status=413
            )
        shape = model.operation_model(api_name).input_shape
        try:
            if shape is not None:
                botocore.validate.validate_parameters(args.params, shape)
            elif args.params:
                raise RequestRejected("aws_bad_params", f"{op[:100]} takes no parameters")
        except botocore.exceptions.ParamValidationError:
            raise RequestRejected("aws_bad_params", f"invalid parameters for {op[:100]}") from None

        # 2. The call; credentials when botocore signs it.
        role_arn = policy.role_arn_template.format(tenant=c.tenant, agent_role=c.agent_role)
        creds = ctx.resource(f"aws:{role_arn}", _Creds)
        # The redactor of the keys this call signed with, not whatever ``creds`` holds
        # once it returns (refreshed, or cleared by the session ending meanwhile).
        used: list[Redactor] = []

        def fetch() -> dict[str, str]:
            values, redactor = self._credentials(ctx, creds, role_arn)
            used.append(redactor)
            return values

        deferred = _DeferredCredentials(fetch)
        client = self._session(deferred).create_client(
            args.service,
            region_name=s.region,
            endpoint_url=s.endpoint_url,
            config=self._cfg,
        )
        try:
            resp = getattr(client, args.operation)(**args.params)
        except (RequestRejected, AccessDenied, BackendUnavailable):
            raise  # ours, from the exchange
        except botocore.exceptions.ParamValidationError:
            raise RequestRejected("aws_bad_params", f"invalid parameters for {op[:100]}") from None
        except botocore.exceptions.ClientError as exc:
            raise _translate(exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise BackendUnavailable(
                "aws_unavailable", f"the AWS call failed ({type(exc).__name__})", status=502
            ) from None
        except (TypeError, ValueError):
            # A service customisation refusing a value the model let through.
            raise RequestRejected("aws_bad_params", f"invalid parameters for {op[:100]}") from None
        finally:
            client.close()
        resp.pop("ResponseMetadata", None)
        budget = s.max_result_bytes
        # The session's own secrets never leave, even if echoed, in any form.
        result = _jsonable(resp, budget, used[-1] if used else creds.redactor)
        if len(json.dumps(result)) > budget:
            raise RequestRejected(
                "result_too_large", f"the result exceeds {budget} bytes", status=422
            )
        return {"result": result}

    def _credentials(
        self, ctx: ToolContext, creds: _Creds, role_arn: str
    ) -> tuple[dict[str, str], Redactor]:
        """The session's credentials, and the redactor of their secret parts."""
        with creds.lock:
            if creds.values and creds.redactor is not None and time.time() < creds.expires - 60:
                return dict(creds.values), creds.redactor
            c = ctx.claims
            oidc_role = self.settings.oidc_role_template.format(
                agent_role=c.agent_role, tenant=c.tenant
            )
            lease = ctx.read_secret(f"identity/oidc/token/{oidc_role}")
            token = str(lease.data.get("token", ""))
            if not token:
                raise BackendUnavailable("openbao_error", "OpenBao returned no identity token")
            sts = self._session(None).create_client(
                "sts",
                region_name=self.settings.region,
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
            keys = [creds.values[k].encode() for k in ("SecretAccessKey", "SessionToken")]
            creds.redactor = Redactor([k for k in keys if len(k) >= MIN_SECRET_BYTES])
            return dict(creds.values), creds.redactor


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
