"""HTTP APIs for accounts, devices and keys. Each view: validate, call one service, serialize."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth import login as django_login
from django.contrib.auth import logout as django_logout
from django.middleware.csrf import get_token
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from enigmo.errors import EnigmoError
from enigmo.fields import Base64BytesField, StrictCharField, UsernameField
from keys import selectors, services
from keys.authentication import session_bind
from keys.services import PreKeyInput


logger = logging.getLogger("enigmo.auth")


def client_ip(request: Request) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


@contextmanager
def _auth_failures_logged(request: Request, username: object) -> Iterator[None]:
    """Log refused registrations and logins with user and IP (never the signature or nonce)."""
    try:
        yield
    except EnigmoError as exc:
        if exc.status in (401, 409, 429):
            logger.warning("auth refused code=%s user=%s ip=%s", exc.code, str(username)[:32], client_ip(request))
        raise


def _start_browser_session(request: Request, result: services.LoginResult) -> None:
    # The session cookie is bound to one device; the browser then sends X-CSRFToken.
    django_login(request._request, result.device.user, backend="django.contrib.auth.backends.ModelBackend")
    session_bind(request._request.session, device=result.device, token=result.token)


def _login_output(request: Request, result: services.LoginResult) -> dict[str, Any]:
    return {
        "user_id": result.device.user.username,
        "device_id": result.device.device_id,
        "token": result.token,
        "csrf_token": get_token(request._request),
    }


LoginOutput = inline_serializer(
    "LoginOutput",
    {
        "user_id": serializers.CharField(),
        "device_id": serializers.IntegerField(),
        "token": serializers.CharField(),
        "csrf_token": serializers.CharField(),
    },
)


class ChallengeApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        nonce = Base64BytesField(length=32)
        expires_in = serializers.IntegerField()

    @extend_schema(request=None, responses={200: OutputSerializer}, operation_id="auth_challenge")
    def post(self, request: Request) -> Response:
        from enigmo import ratelimit

        ratelimit.hit("challenge_ip", client_ip(request))
        nonce, ttl = services.challenge_issue()
        return Response(self.OutputSerializer({"nonce": nonce, "expires_in": ttl}).data)


class RegisterApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        username = UsernameField()
        display_name = StrictCharField(max_length=64, allow_blank=True, default="")
        account_key = Base64BytesField(length=32)
        device_key = Base64BytesField(length=32)
        certificate = Base64BytesField(length=64)
        issued_ms = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
        device_name = StrictCharField(max_length=64, allow_blank=True, default="")
        nonce = Base64BytesField(length=32)
        timestamp_ms = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
        signature = Base64BytesField(length=64)

    @extend_schema(request=InputSerializer, responses={201: LoginOutput}, operation_id="auth_register")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with _auth_failures_logged(request, data.validated_data["username"]):
            result = services.account_register(**data.validated_data, client_ip=client_ip(request))
        _start_browser_session(request, result)
        return Response(_login_output(request, result), status=status.HTTP_201_CREATED)


class LoginApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        username = UsernameField()
        device_id = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        nonce = Base64BytesField(length=32)
        timestamp_ms = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
        signature = Base64BytesField(length=64)

    @extend_schema(request=InputSerializer, responses={200: LoginOutput}, operation_id="auth_login")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with _auth_failures_logged(request, data.validated_data["username"]):
            result = services.device_login(**data.validated_data, client_ip=client_ip(request))
        _start_browser_session(request, result)
        return Response(_login_output(request, result))


class LogoutApi(APIView):
    @extend_schema(request=None, responses={204: None}, operation_id="auth_logout")
    def post(self, request: Request) -> Response:
        services.device_logout(device=request.auth)
        django_logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeviceOutputSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    current = serializers.BooleanField()


class DeviceListApi(APIView):
    @extend_schema(responses={200: DeviceOutputSerializer(many=True)}, operation_id="devices_list")
    def get(self, request: Request) -> Response:
        devices = selectors.device_list_for_user(user=request.user)
        rows = [
            {
                "device_id": d.device_id,
                "name": d.name,
                "created_at": d.created_at,
                "last_seen_at": d.last_seen_at,
                "current": d.pk == request.auth.pk,
            }
            for d in devices
        ]
        return Response(DeviceOutputSerializer(rows, many=True).data)


class DeviceRevokeApi(APIView):
    @extend_schema(request=None, responses={204: None}, operation_id="devices_revoke")
    def delete(self, request: Request, device_id: int) -> Response:
        services.device_revoke(actor=request.auth, device_id=device_id)
        if device_id == request.auth.device_id:
            django_logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeviceLinkStartApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        device_key = Base64BytesField(length=32)
        provisioning_key = Base64BytesField(length=32)
        name = StrictCharField(max_length=64, allow_blank=True, default="")

    class OutputSerializer(serializers.Serializer):
        code = serializers.CharField()
        secret = serializers.CharField()
        expires_in = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer}, operation_id="devices_link_start")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        link = services.device_link_start(**data.validated_data, client_ip=client_ip(request))
        return Response(self.OutputSerializer(link).data, status=status.HTTP_201_CREATED)


class DeviceLinkPollApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        secret = serializers.RegexField(r"^[A-Za-z0-9_-]{1,100}$", max_length=100)

    class OutputSerializer(serializers.Serializer):
        status = serializers.CharField()
        user_id = serializers.CharField(required=False)
        device_id = serializers.IntegerField(required=False)
        provisioning_envelope = Base64BytesField(required=False)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer}, operation_id="devices_link_poll")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(self.OutputSerializer(services.device_link_poll(**data.validated_data)).data)


class DeviceLinkApi(APIView):
    class OutputSerializer(serializers.Serializer):
        code = serializers.CharField()
        user_id = serializers.CharField()
        device_id = serializers.IntegerField()
        device_key = Base64BytesField(length=32)
        provisioning_key = Base64BytesField(length=32)
        name = serializers.CharField()

    class InputSerializer(serializers.Serializer):
        device_id = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        certificate = Base64BytesField(length=64)
        issued_ms = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
        provisioning_envelope = Base64BytesField(max_length=4096)

    @extend_schema(responses={200: OutputSerializer}, operation_id="devices_link_describe")
    def get(self, request: Request, code: str) -> Response:
        return Response(self.OutputSerializer(services.device_link_describe(actor=request.auth, code=code)).data)

    @extend_schema(request=InputSerializer, responses={201: DeviceOutputSerializer}, operation_id="devices_link_approve")
    def post(self, request: Request, code: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = services.device_link_approve(actor=request.auth, code=code, **data.validated_data)
        out = {"device_id": device.device_id, "name": device.name, "created_at": device.created_at, "last_seen_at": None, "current": False}
        return Response(DeviceOutputSerializer(out).data, status=status.HTTP_201_CREATED)


class DeviceKeySerializer(serializers.Serializer):
    device_id = serializers.IntegerField(source="device.device_id")
    identity_key = Base64BytesField(source="identity.public_key")
    certificate = Base64BytesField(source="identity.certificate")
    issued_ms = serializers.IntegerField(source="identity.issued_ms")


class IdentityKeyApi(APIView):
    class InputSerializer(serializers.Serializer):
        identity_key = Base64BytesField(length=32)
        certificate = Base64BytesField(length=64)
        issued_ms = serializers.IntegerField(min_value=0, max_value=2**63 - 1)

    class OutputSerializer(serializers.Serializer):
        user_id = serializers.CharField(source="user.username")
        account_key = Base64BytesField(source="account_key.public_key")
        devices = DeviceKeySerializer(many=True)

    @extend_schema(request=InputSerializer, responses={200: None}, operation_id="keys_identity_publish")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.identity_key_publish(device=request.auth, **data.validated_data)
        return Response({"device_id": request.auth.device_id}, status=status.HTTP_200_OK)


class IdentityKeyDirectoryApi(APIView):
    @extend_schema(responses={200: IdentityKeyApi.OutputSerializer}, operation_id="keys_identity_get")
    def get(self, request: Request, user_id: str) -> Response:
        directory = selectors.identity_directory_get(username=user_id)
        return Response(IdentityKeyApi.OutputSerializer(directory).data)


class SignedPreKeyInput(serializers.Serializer):
    key_id = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    public_key = Base64BytesField(length=32)
    signature = Base64BytesField(length=64)


class OneTimePreKeyInput(serializers.Serializer):
    key_id = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    public_key = Base64BytesField(length=32)


class PreKeyUploadApi(APIView):
    class InputSerializer(serializers.Serializer):
        signed_prekey = SignedPreKeyInput(required=False)
        one_time_prekeys = OneTimePreKeyInput(many=True, required=False, default=list)

    class OutputSerializer(serializers.Serializer):
        one_time_prekeys_remaining = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer}, operation_id="keys_prekeys_upload")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        signed = data.validated_data.get("signed_prekey")
        remaining = services.prekeys_upload(
            device=request.auth,
            signed_prekey=PreKeyInput(**signed) if signed else None,
            one_time_prekeys=[PreKeyInput(**k) for k in data.validated_data["one_time_prekeys"]],
        )
        return Response(self.OutputSerializer({"one_time_prekeys_remaining": remaining}).data)


class PreKeyBundleApi(APIView):
    class SignedOut(serializers.Serializer):
        key_id = serializers.IntegerField()
        public_key = Base64BytesField()
        signature = Base64BytesField()

    class OneTimeOut(serializers.Serializer):
        key_id = serializers.IntegerField()
        public_key = Base64BytesField()

    class DeviceBundle(serializers.Serializer):
        device_id = serializers.IntegerField(source="device.device_id")
        identity_key = Base64BytesField(source="identity.public_key")
        certificate = Base64BytesField(source="identity.certificate")
        issued_ms = serializers.IntegerField(source="identity.issued_ms")
        signed_prekey = serializers.SerializerMethodField()
        one_time_prekey = serializers.SerializerMethodField()

        def get_signed_prekey(self, obj: dict[str, Any]) -> dict[str, Any] | None:
            return PreKeyBundleApi.SignedOut(obj["signed_prekey"]).data if obj["signed_prekey"] else None

        def get_one_time_prekey(self, obj: dict[str, Any]) -> dict[str, Any] | None:
            return PreKeyBundleApi.OneTimeOut(obj["one_time_prekey"]).data if obj["one_time_prekey"] else None

    class OutputSerializer(serializers.Serializer):
        user_id = serializers.CharField(source="user.username")
        account_key = Base64BytesField(source="account_key.public_key")
        devices = serializers.ListField(child=serializers.DictField())

    @extend_schema(responses={200: OutputSerializer}, operation_id="keys_prekeys_bundle")
    def get(self, request: Request, user_id: str) -> Response:
        bundle = services.prekey_bundle_claim(requester=request.auth, username=user_id)
        return Response(
            {
                "user_id": bundle["user"].username,
                "account_key": Base64BytesField().to_representation(bundle["account_key"].public_key),
                "devices": self.DeviceBundle(bundle["devices"], many=True).data,
            }
        )
