"""A linkd connector in Python, serving the `acmemobile` integration (and,
with `--oauth-integration ID`, the capabilities of an OAuth integration of
linkd's catalog: linkd logs the end user in at the provider and keeps the
tokens fresh; the connector gets the current access token and calls the
provider's API with it).

It implements `linkd.connector.v1.ConnectorService` from stubs generated
from `proto/linkd/connector/v1/connector.proto`, and logs in to the Acme
Mobile website (`provider_site.py`) over HTTP the way a real integration
does: it posts the login form, keeps the session cookie, answers the
second-factor page, and calls the JSON endpoints the site's own pages use.

    python3 -m grpc_tools.protoc -I../../../proto --python_out=gen \\
        --grpc_python_out=gen linkd/connector/v1/connector.proto
    python3 connector.py --port 7001 --site http://127.0.0.1:7100

See README.md for the whole guide.
"""

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent import futures
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("CONNECTOR_STUBS", os.path.join(HERE, "gen")))

import grpc  # noqa: E402
from google.protobuf import json_format, struct_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from linkd.connector.v1 import connector_pb2 as pb  # noqa: E402
from linkd.connector.v1 import connector_pb2_grpc as pb_grpc  # noqa: E402

INTEGRATION = "acmemobile"
VERSION = "acme-mobile-python 1.0.0"
ERROR_DOMAIN = "connector.linkd.dev"
HTTP_TIMEOUT = 10  # seconds; linkd's deadline is longer

# The codes each reason travels with (see the proto's service comment).
CODES = {
    "INVALID_CREDENTIALS": grpc.StatusCode.UNAUTHENTICATED,
    "INVALID_CODE": grpc.StatusCode.UNAUTHENTICATED,
    "ACCOUNT_LOCKED": grpc.StatusCode.PERMISSION_DENIED,
    "OPERATION_FAILED": grpc.StatusCode.FAILED_PRECONDITION,
    "SESSION_EXPIRED": grpc.StatusCode.FAILED_PRECONDITION,
    "PROVIDER_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
}


class ConnectorError(Exception):
    """One of the protocol's errors; `message` never holds a secret."""

    def __init__(self, reason, message=""):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason.lower().replace("_", " ")


def abort(context, error):
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    detail = status_pb2.Status(code=CODES[error.reason].value[0], message=error.message)
    detail.details.add().Pack(info)
    context.abort_with_status(rpc_status.to_status(detail))


def describe_integration():
    """The integration as linkd's catalog will show it."""
    schema = lambda value: json_format.ParseDict(value, struct_pb2.Struct())  # noqa: E731
    card = {
        "type": "object",
        "additionalProperties": False,
        "required": ["cardNumber", "expirationDate", "cvv", "billingZip"],
        "properties": {
            "cardNumber": {"type": "string", "format": "card-number"},
            "expirationDate": {"type": "string", "format": "card-expiry"},
            "cvv": {"type": "string", "format": "card-cvv"},
            "nameOnCard": {"type": "string", "minLength": 1, "maxLength": 100},
            "billingZip": {"type": "string", "format": "zip-code"},
            "makeDefault": {"type": "boolean", "default": True},
        },
    }
    return pb.Integration(
        integration_id=INTEGRATION,
        name="Acme Mobile",
        category="mobile_carrier",
        credential_fields=[
            pb.CredentialField(name="username", label="Username"),
            pb.CredentialField(name="password", label="Password", secret=True),
        ],
        capabilities=[
            pb.Capability(
                resource="mobileBillingStatement",
                action=pb.OPERATION_ACTION_READ,
                description="Reads recent monthly billing statements.",
                result_key="billing",
                result_description="billing: [{period, statementDate, dueDate, amountDue, currency, status, lines}], newest first.",
                arguments_schema=schema(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "months": {"type": "integer", "minimum": 1, "maximum": 24, "default": 3}
                        },
                    }
                ),
            ),
            pb.Capability(
                resource="paymentMethod",
                action=pb.OPERATION_ACTION_READ,
                description="Lists the payment methods saved on the account.",
                result_key="paymentMethods",
                result_description="paymentMethods: [{id, type, brand, last4, expirationDate, nameOnCard, isDefault}].",
                arguments_schema=schema(
                    {"type": "object", "additionalProperties": False, "properties": {}}
                ),
            ),
            pb.Capability(
                resource="paymentMethod",
                action=pb.OPERATION_ACTION_WRITE,
                description="Adds a card to the account.",
                result_key="paymentMethod",
                result_description="paymentMethod: {id, type, brand, last4, expirationDate, nameOnCard, isDefault}.",
                arguments_schema=schema(card),
            ),
        ],
    )


def describe_oauth_integration(integration_id):
    """An OAuth integration of linkd's catalog (`auth.type` `oauth2`): no
    credential fields, since the end user logs in at the provider's own
    page; the capabilities must be the catalog entry's."""
    return pb.Integration(
        integration_id=integration_id,
        name="Acme ID",
        category="creator",
        capabilities=[
            pb.Capability(
                resource="profile",
                action=pb.OPERATION_ACTION_READ,
                description="Reads the profile.",
                result_key="profile",
                result_description="profile: {id, username}.",
                arguments_schema=json_format.ParseDict(
                    {"type": "object", "additionalProperties": False, "properties": {}},
                    struct_pb2.Struct(),
                ),
            )
        ],
    )


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers here (where the login went), not detours."""

    def redirect_request(self, *args, **kwargs):
        return None


class AcmeSite:
    """The provider website, as the connector talks to it."""

    def __init__(self, base_url):
        self.base = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(NoRedirect)

    def request(self, method, path, cookie=None, form=None, body=None, headers=None):
        data, headers = None, dict(headers or {})
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if cookie:
            headers["Cookie"] = cookie
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with self.opener.open(req, timeout=HTTP_TIMEOUT) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as answer:  # 3xx and 4xx are answers
            return answer.code, answer.headers, answer.read()
        except (urllib.error.URLError, OSError) as err:
            raise ConnectorError("PROVIDER_UNAVAILABLE", "the provider website cannot be reached") from err


def cookie_from(headers, name):
    for header in headers.get_all("Set-Cookie") or []:
        pair = header.split(";", 1)[0]
        key, _, value = pair.partition("=")
        if key.strip() == name and value:
            return f"{name}={value}"
    return None


def session_of(cookie, max_age_seconds=12 * 60 * 60):
    expires = datetime.now(timezone.utc) + timedelta(seconds=max_age_seconds)
    session = pb.Session(data=json.dumps({"cookie": cookie}).encode())
    session.expires_at.FromDatetime(expires)
    return session


def cookie_of(session):
    try:
        return json.loads(session.data)["cookie"]
    except (ValueError, KeyError) as err:
        raise ConnectorError("SESSION_EXPIRED", "the session is not one this connector made") from err


class Connector(pb_grpc.ConnectorServiceServicer):
    def __init__(self, site, oauth_integration=None):
        self.site = site
        self.oauth_integration = oauth_integration

    def Describe(self, request, context):
        integrations = [describe_integration()]
        if self.oauth_integration:
            integrations.append(describe_oauth_integration(self.oauth_integration))
        return pb.DescribeResponse(integrations=integrations, connector_version=VERSION)

    def Login(self, request, context):
        try:
            return pb.LoginResponse(**self.login(request.credentials))
        except ConnectorError as err:
            abort(context, err)

    def login(self, credentials):
        status, headers, _ = self.site.request(
            "POST",
            "/login",
            form={"username": credentials.get("username", ""), "password": credentials.get("password", "")},
        )
        return self.after_login(status, headers)

    def after_login(self, status, headers):
        location = headers.get("Location", "")
        if status == 303 and location == "/account":
            return {"logged_in": pb.LoggedIn(session=session_of(cookie_from(headers, "acme_session")))}
        if status == 303 and location == "/verify":
            pending = pb.Session(data=json.dumps({"cookie": cookie_from(headers, "acme_pending")}).encode())
            return {
                "second_factor_required": pb.SecondFactorRequired(
                    pending=pending, prompt="Enter the code Acme Mobile texted to your phone."
                )
            }
        if status == 401:
            raise ConnectorError("INVALID_CREDENTIALS")
        if status == 423:
            raise ConnectorError("ACCOUNT_LOCKED")
        raise ConnectorError("PROVIDER_UNAVAILABLE", f"the login answered HTTP {status}")

    def SubmitSecondFactor(self, request, context):
        try:
            status, headers, _ = self.site.request(
                "POST", "/verify", cookie=cookie_of(request.pending), form={"code": request.code}
            )
            if status == 401:
                raise ConnectorError("INVALID_CODE")
            if status == 410:
                raise ConnectorError("SESSION_EXPIRED")
            return pb.SubmitSecondFactorResponse(**self.after_login(status, headers))
        except ConnectorError as err:
            abort(context, err)

    def ExecuteOperation(self, request, context):
        try:
            data, renewed = self.execute(request)
            return pb.ExecuteOperationResponse(
                data=json_format.ParseDict(data, struct_pb2.Value()),
                session=session_of(renewed) if renewed else None,
            )
        except ConnectorError as err:
            abort(context, err)

    def execute(self, request):
        if request.context.integration_id == self.oauth_integration:
            return self.execute_oauth(request), None
        cookie = cookie_of(request.session)
        arguments = json_format.MessageToDict(request.arguments)
        operation = (request.resource, request.action)
        if operation == ("mobileBillingStatement", pb.OPERATION_ACTION_READ):
            months = int(arguments.get("months", 3))
            answer, renewed = self.api("GET", f"/api/billing?months={months}", cookie)
            return answer["statements"], renewed
        if operation == ("paymentMethod", pb.OPERATION_ACTION_READ):
            answer, renewed = self.api("GET", "/api/payment-methods", cookie)
            return answer["paymentMethods"], renewed
        if operation == ("paymentMethod", pb.OPERATION_ACTION_WRITE):
            # `arguments` holds the card number and CVV (request.secret_arguments
            # names them): sent to the provider, never logged.
            answer, renewed = self.api("POST", "/api/payment-methods", cookie, body=arguments)
            return answer["paymentMethod"], renewed
        raise ConnectorError("OPERATION_FAILED", "this connector does not run that operation")

    def execute_oauth(self, request):
        """For an OAuth integration the session is linkd's view of the grant:
        {"accessToken", "tokenType", "scope", "expiresAt", "apiBaseUrl"}.
        A refused token is SESSION_EXPIRED: linkd refreshes it and calls
        once more. The token is never logged."""
        try:
            grant = json.loads(request.session.data)
            api = AcmeSite(grant["apiBaseUrl"])
            authorization = f"{grant['tokenType']} {grant['accessToken']}"
        except (ValueError, KeyError, TypeError) as err:
            raise ConnectorError("SESSION_EXPIRED", "the session holds no access token") from err
        if (request.resource, request.action) != ("profile", pb.OPERATION_ACTION_READ):
            raise ConnectorError("OPERATION_FAILED", "this connector does not run that operation")
        status, _, raw = api.request("GET", "/me", headers={"Authorization": authorization})
        if status == 401:
            raise ConnectorError("SESSION_EXPIRED")
        if status != 200:
            raise ConnectorError("PROVIDER_UNAVAILABLE", f"the provider's API answered HTTP {status}")
        me = json.loads(raw)
        return {"id": me["sub"], "username": me["sub"]}

    def api(self, method, path, cookie, body=None):
        """The endpoint's JSON, and the new session cookie if the site rotated it."""
        status, headers, raw = self.site.request(method, path, cookie=cookie, body=body)
        if status == 401:
            raise ConnectorError("SESSION_EXPIRED")
        if status in (200, 201):
            return json.loads(raw), cookie_from(headers, "acme_session")
        if 400 <= status < 500:
            message = json.loads(raw or b"{}").get("message", "the provider refused the operation")
            raise ConnectorError("OPERATION_FAILED", message[:200])
        raise ConnectorError("PROVIDER_UNAVAILABLE", f"the provider answered HTTP {status}")

    def CheckSession(self, request, context):
        try:
            status, _, page = self.site.request("GET", "/account", cookie=cookie_of(request.session))
            if status not in (200, 303):
                raise ConnectorError("PROVIDER_UNAVAILABLE", f"the account page answered HTTP {status}")
            answer = pb.CheckSessionResponse(active=status == 200)
            # The account page says when the session ends; linkd warns the
            # client ahead of it.
            found = re.search(rb'class="session-ends" data-epoch="(\d+)"', page)
            if answer.active and found:
                answer.expires_at.FromSeconds(int(found.group(1)))
            return answer
        except ConnectorError as err:
            if err.reason == "SESSION_EXPIRED":
                return pb.CheckSessionResponse(active=False)
            abort(context, err)

    def Logout(self, request, context):
        try:
            self.site.request("POST", "/logout", cookie=cookie_of(request.session))
            return pb.LogoutResponse()
        except ConnectorError as err:
            if err.reason == "SESSION_EXPIRED":
                return pb.LogoutResponse()
            abort(context, err)


class BearerToken(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer TOKEN` when a token is set."""

    def __init__(self, token):
        self.expected = f"Bearer {token}"

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

        self.refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, details):
        presented = dict(details.invocation_metadata).get("authorization", "")
        if presented == self.expected:
            return continuation(details)
        return self.refusal


def main():
    parser = argparse.ArgumentParser(description="The Acme Mobile connector for linkd.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7001, help="0 picks a free port")
    parser.add_argument("--site", default="http://127.0.0.1:7100", help="the Acme Mobile website")
    parser.add_argument("--token", default=os.environ.get("CONNECTOR_TOKEN"), help="bearer token linkd must send")
    parser.add_argument(
        "--oauth-integration", help="also serve this OAuth integration of linkd's catalog (profile read)"
    )
    parser.add_argument("--tls-cert", help="PEM certificate to serve TLS with (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="PEM CA that must have signed linkd's client certificate (mutual TLS)")
    args = parser.parse_args()
    interceptors = [BearerToken(args.token)] if args.token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors)
    connector = Connector(AcmeSite(args.site), oauth_integration=args.oauth_integration)
    pb_grpc.add_ConnectorServiceServicer_to_server(connector, server)
    address = f"{args.host}:{args.port}"
    if args.tls_cert:
        read = lambda path: open(path, "rb").read()  # noqa: E731
        credentials = grpc.ssl_server_credentials(
            [(read(args.tls_key), read(args.tls_cert))],
            root_certificates=read(args.tls_client_ca) if args.tls_client_ca else None,
            require_client_auth=bool(args.tls_client_ca),
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    server.start()
    # The first line says where it listens, for whoever started it.
    print(f"connector listening on {args.host}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
